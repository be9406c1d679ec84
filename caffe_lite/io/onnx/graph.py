"""The ONNX graph under construction: nodes, initializers and tensor names.

Converters add nodes with `op`, weights with `const`, and get back provisional tensor ids
("#17"); `finish` picks the outputs, drops what no output needs, folds BatchNorm + Scale into
one BatchNormalization, gives every tensor its final name (a Caffe blob's name where one
exists) and builds the ModelProto.  Keeping our own node list until then makes those passes
plain Python over small records."""
import dataclasses

import numpy as np

from ...errors import CaffeLiteError


@dataclasses.dataclass
class Node:
    op: str
    inputs: list
    outputs: list
    name: str
    attrs: dict


class Graph:
    def __init__(self, opset):
        self.opset = opset
        self.nodes = []
        self.inits = {}        # tensor id -> np.ndarray
        self.inputs = []       # (tensor id, shape)
        self.prefer = {}       # tensor id -> preferred final name
        self.prunable = set()  # initializers holding prunable weights
        self._by_memory = {}
        self._next = 0

    # --- building ----------------------------------------------------------------------------
    def new_tensor(self, prefer):
        tid = f"#{self._next}"
        self._next += 1
        self.prefer[tid] = prefer
        return tid

    @property
    def mark(self):
        """Tensors created after this mark are newer than it (`created_since`)."""
        return self._next

    def created_since(self, tid, mark):
        return int(tid[1:]) >= mark

    def add_input(self, prefer, shape):
        tid = self.new_tensor(prefer)
        self.inputs.append((tid, tuple(shape)))
        return tid

    def const(self, array, prefer, dtype=np.float32, prunable=False):
        """An initializer holding `array` (pruned zeros stay zeros).  The same memory asked
        for twice (weights shared between layers) is one initializer."""
        array = np.asarray(array, dtype=dtype)  # copied once, into the model, by finish
        key = (array.__array_interface__["data"][0], array.shape, array.strides, array.dtype)
        if array.size and key in self._by_memory:  # every array held stays in self.inits
            return self._by_memory[key]
        tid = self.new_tensor(prefer)
        self.inits[tid] = array
        self._by_memory[key] = tid
        if prunable:
            self.prunable.add(tid)
        return tid

    def ints(self, values, prefer):
        return self.const(np.asarray(values, np.int64).reshape(-1), prefer, np.int64)

    def scalar(self, value, prefer):
        return self.const(np.float32(value), prefer)

    def op(self, op_type, inputs, name, outputs=1, **attrs):
        """Append a node; returns its output tensor id (a list when outputs > 1)."""
        outs = [self.new_tensor(f"{name}/{op_type}") for _ in range(outputs)]
        self.nodes.append(Node(op_type, list(inputs), outs, name, attrs))
        return outs[0] if outputs == 1 else outs

    # --- opset-dependent forms ---------------------------------------------------------------
    def reduce_mean(self, x, axes, name):
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.ints(axes, f"{name}/axes")], name, keepdims=1)
        return self.op("ReduceMean", [x], name, axes=list(axes), keepdims=1)

    def reshape(self, x, shape, name):
        return self.op("Reshape", [x, self.ints(shape, f"{name}/shape")], name)

    # --- finishing ---------------------------------------------------------------------------
    def input_shapes(self):
        return [(self.final[t], s) for t, s in self.inputs]

    def finish(self, outputs, graph_name, doc):
        """The ModelProto computing `outputs` ([(tensor id, Caffe shape, blob name or None)])
        and the outputs as [(name, shape, blob name)]."""
        from . import _onnx
        onnx = _onnx()
        outputs = self._distinct_outputs(outputs)
        out_ids = [t for t, _, _ in outputs]
        self._prune(out_ids)
        self._fold_batch_norm_scale(set(out_ids))
        self._prune(out_ids)
        check_size(self)
        names = self.final = self._final_names(out_ids)
        h, tp = onnx.helper, onnx.TensorProto
        nodes, count = [], {}
        for n in self.nodes:
            k = count[n.name] = count.get(n.name, -1) + 1
            nodes.append(h.make_node(n.op, [names[i] if i else "" for i in n.inputs],
                                     [names[o] for o in n.outputs],
                                     name=f"{n.name}/{k}" if k else n.name, **n.attrs))
        used = {i for n in self.nodes for i in n.inputs} | set(out_ids)
        inputs = [h.make_tensor_value_info(names[t], tp.FLOAT, list(s))
                  for t, s in self.inputs if t in used]
        outs = [h.make_tensor_value_info(names[t], tp.FLOAT, list(s)) for t, s, _ in outputs]
        # Built in place: make_graph / make_model would copy every weight twice more.
        model = onnx.ModelProto(producer_name="caffe-lite")
        opset = model.opset_import.add(domain="", version=self.opset)
        model.ir_version = h.find_min_ir_version_for([opset])
        graph = model.graph
        graph.name, graph.doc_string = graph_name, doc
        graph.node.extend(nodes)
        graph.input.extend(inputs)
        graph.output.extend(outs)
        types = {np.dtype(np.float32): tp.FLOAT, np.dtype(np.int64): tp.INT64}
        for t, a in self.inits.items():
            graph.initializer.add(name=names[t], data_type=types[a.dtype], dims=a.shape,
                                  raw_data=np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
                                  .tobytes())
        return model, [(names[t], s, b) for t, s, b in outputs]

    def _distinct_outputs(self, outputs):
        """An output that is a graph input, or a tensor asked for twice, gets an Identity.
        Each output is named after its blob."""
        seen, inputs, result = set(), {t for t, _ in self.inputs}, []
        for t, shape, blob in outputs:
            blob = blob or self.prefer[t]
            if t in seen or t in inputs:
                t = self.op("Identity", [t], f"{blob}/output")
            self.prefer[t] = blob
            seen.add(t)
            result.append((t, shape, blob))
        return result

    def _prune(self, out_ids):
        """Keep only the nodes (and initializers) some output depends on."""
        need, kept = set(out_ids), []
        for n in reversed(self.nodes):
            if any(o in need for o in n.outputs):
                kept.append(n)
                need.update(i for i in n.inputs if i)
        self.nodes = kept[::-1]
        self.inits = {t: a for t, a in self.inits.items() if t in need}

    def _consumers(self):
        uses = {}
        for n in self.nodes:
            for i in n.inputs:
                uses.setdefault(i, []).append(n)
        return uses

    def _fold_batch_norm_scale(self, protected):
        """BatchNormalization(scale 1, B 0) -> Mul(per-channel) [-> Add(per-channel)] becomes
        one BatchNormalization with that scale and B (Caffe's BatchNorm + Scale pair)."""
        uses = self._consumers()
        drop = set()
        for bn in self.nodes:
            rank = bn.attrs.pop("_plain_rank", 0) if bn.op == "BatchNormalization" else 0
            if not rank:
                continue
            channel = (self.inits[bn.inputs[1]].shape[0],) + (1,) * (rank - 2)
            y, bias = bn.outputs[0], None
            mul = self._sole_channel_op(y, "Mul", channel, uses, protected)
            if mul is None:
                continue
            scale, last, y = mul[1], mul[0], mul[0].outputs[0]
            add = self._sole_channel_op(y, "Add", channel, uses, protected)
            if add is not None:
                bias, last = add[1], add[0]
            self.inits[bn.inputs[1]] = self.inits[scale].reshape(-1).copy()
            if bias is not None:
                self.inits[bn.inputs[2]] = self.inits[bias].reshape(-1).copy()
            drop.add(id(mul[0]))
            if add is not None:
                drop.add(id(add[0]))
            bn.outputs[0] = last.outputs[0]
        self.nodes = [n for n in self.nodes if id(n) not in drop]

    def _sole_channel_op(self, tensor, op, shape, uses, protected):
        """(node, initializer id) when `tensor`'s only use is `op` with an initializer of
        `shape` (C, 1, ...): one value per channel."""
        users = uses.get(tensor, [])
        if tensor in protected or len(users) != 1 or users[0].op != op:
            return None
        node = users[0]
        other = [i for i in node.inputs if i != tensor]
        if len(other) != 1 or other[0] not in self.inits:
            return None
        if self.inits[other[0]].shape != shape:
            return None
        return node, other[0]

    def _final_names(self, out_ids):
        """Tensor id -> name.  Graph inputs and outputs keep their Caffe blob names; other
        tensors take their preferred name, made unique with a _1, _2, ... suffix."""
        names, taken = {}, set()

        def give(tid):
            base = self.prefer[tid]
            name, k = base, 0
            while name in taken:
                k += 1
                name = f"{base}_{k}"
            names[tid] = name
            taken.add(name)

        for t, _ in self.inputs:
            give(t)
        for t in out_ids:
            give(t)
        for n in self.nodes:
            for t in n.inputs + n.outputs:
                if t and t not in names:
                    give(t)
        for t in self.inits:
            if t not in names:
                give(t)
        return names


def check_size(graph):
    total = sum(a.nbytes for a in graph.inits.values())
    if total >= 2 ** 31 - 2 ** 24:
        raise CaffeLiteError(f"the weights take {total / 2 ** 30:.2f} GiB; an ONNX file holds "
                             "at most 2 GiB (external data files are not written)")
