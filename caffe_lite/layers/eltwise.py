"""Eltwise: elementwise PROD, SUM (with coefficients) or MAX over two or more equal-shaped
bottoms."""
import numpy as np

from ..proto import caffe_pb2
from . import jit, parallel
from .base import Layer
from .neuron import Scratch
from .parallel import MIN_PARALLEL_STREAM_ELEMENTS, prepare_blocks
from .program import in_order
from .registry import register

F32 = np.float32
_Op = caffe_pb2.EltwiseParameter


@register("Eltwise")
class EltwiseLayer(Layer):
    channel_route = "join"
    min_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.eltwise_param
        self.op = p.operation
        if p.coeff and len(p.coeff) != len(bottom):
            raise self.error(f"takes one coefficient per bottom blob: got {len(p.coeff)} "
                             f"coeff value(s) for {len(bottom)} bottoms")
        if self.op == _Op.PROD and p.coeff:
            raise self.error("takes coefficients only for summation (operation: SUM), "
                             f"got {len(p.coeff)} with operation PROD")
        # MAX ignores coefficients, as in Caffe.
        self.coeffs = [F32(c) for c in p.coeff] or [F32(1)] * len(bottom)
        self.stable_prod_grad = p.stable_prod_grad
        self._saved = Scratch()            # bottom data overwritten when run in place
        self._tmp = Scratch()
        self._max_idx = Scratch(np.int32)  # Caffe's max_idx_: which bottom gave the max
        self._bool = Scratch(np.bool_)
        self._tmp_idx = Scratch(np.int32)
        self._tmp_idx2 = Scratch(np.int32)
        self.max_idx = None

    def reshape(self, bottom, top):
        s0 = bottom[0].shape
        for i, b in enumerate(bottom[1:], 1):
            if b.shape != s0:
                raise self.error(f"all bottoms must have the same shape: bottom[0] is {s0}, "
                                 f"bottom[{i}] is {b.shape}")
        top[0].reshape(s0)

    def _inputs(self, bottom, top, saving):
        """The bottoms' data.  In place (top[0] is a bottom; Caffe has no check and then
        computes a wrong SUM), that bottom's data is read from a copy taken in forward."""
        xs = [b.cpu_data for b in bottom]
        alias = next((i for i, b in enumerate(bottom) if b is top[0]), -1)
        if alias >= 0:
            if saving:
                np.copyto(self._saved.view(xs[alias].shape), xs[alias])
            xs[alias] = self._saved.view(xs[alias].shape)
        return xs, alias

    def prepare_cpu(self, bottom, top):
        if self.op != _Op.SUM or any(c != 1 for c in self.coeffs) or \
                any(b is top[0] for b in bottom):
            return None
        xs = [b.cpu_data.reshape(-1) for b in bottom]
        y = top[0].data.reshape(-1)
        k = jit.kernels("neuron")
        if k is not None:
            # the bottoms added in order, a pair at a time: y = x0 + x1, then y = x2 + y ...
            return in_order(*[prepare_blocks(
                y.size, 1, lambda a, b, slot, x=x, s=s: k.add_forward(x, s, y, a, b),
                min_elements=MIN_PARALLEL_STREAM_ELEMENTS,
                spin_elements=parallel.MIN_SPIN_STREAM_ELEMENTS,
                native=(k.add_forward_task, (x, s, y)))
                for x, s in [(xs[0], xs[1])] + [(x, y) for x in xs[2:]]])
        first, rest = xs[:2], xs[2:]

        def run():
            np.add(first[0], first[1], out=y)
            for x in rest:
                np.add(y, x, out=y)
        return run

    def forward_cpu(self, bottom, top):
        run = self.prepare_cpu(bottom, top)
        if run is not None:
            return run()
        xs, alias = self._inputs(bottom, top, saving=True)
        y = top[0].data
        if self.op == _Op.PROD:
            np.multiply(xs[0], xs[1], out=y)
            for x in xs[2:]:
                np.multiply(y, x, out=y)
        elif self.op == _Op.SUM:
            t = self._tmp.view(y.shape)
            np.multiply(xs[0], self.coeffs[0], out=y)
            for x, c in zip(xs[1:], self.coeffs[1:]):
                if c == 1:
                    np.add(y, x, out=y)
                else:
                    np.add(y, np.multiply(x, c, out=t), out=y)
        elif self.op == _Op.MAX:
            # Caffe: between bottoms 0 and 1 a tie goes to bottom 1 (a > b picks a, else b);
            # a later bottom must be strictly greater to take over.  (Whole-array ufuncs,
            # not masked copies, which are several times slower.)
            idx = self.max_idx = self._max_idx.view(y.shape)
            step = self._tmp_idx.view(y.shape)
            np.less_equal(xs[0], xs[1], out=idx)          # 0 or 1
            np.maximum(xs[0], xs[1], out=y)
            for i, x in enumerate(xs[2:], 2):
                np.greater(x, y, out=step)
                np.maximum(y, x, out=y)
                # idx = i where x won: idx += won * (i - idx)
                np.multiply(step, np.subtract(i, idx, out=self._tmp_idx2.view(y.shape)),
                            out=step)
                np.add(idx, step, out=idx)
        else:
            raise self.error(f"unknown elementwise operation {self.op}")

    def backward_cpu(self, top, propagate_down, bottom):
        xs, alias = self._inputs(bottom, top, saving=False)
        y, dy = top[0].cpu_data, top[0].cpu_diff
        # In place, bottom[alias].diff is dy's memory: do that bottom last.
        order = [i for i in range(len(bottom)) if i != alias] + ([alias] if alias >= 0 else [])
        for i in order:
            if not propagate_down[i]:
                continue
            dx = bottom[i].diff
            if self.op == _Op.PROD:
                t = self._tmp.view(y.shape)
                if self.stable_prod_grad:
                    others = [x for j, x in enumerate(xs) if j != i]
                    np.copyto(t, others[0])
                    for x in others[1:]:
                        np.multiply(t, x, out=t)
                else:
                    np.divide(y, xs[i], out=t)
                np.multiply(t, dy, out=dx)
            elif self.op == _Op.SUM:
                c = self.coeffs[i]
                if c == 1:
                    if i != alias:
                        np.copyto(dx, dy)
                else:
                    np.multiply(dy, c, out=dx)
            else:
                # dy where bottom i gave the max, else 0 (a -0.0 where Caffe writes 0.0)
                np.multiply(dy, np.equal(self.max_idx, i, out=self._bool.view(y.shape)),
                            out=dx)
