"""The sparsity report: one row per prunable layer's weight blob, totals, the compression rate,
and size estimates.

JSON form (`caffe-lite sparsity -format json`):
  {"layers": [{"name", "type", "shape", "params", "nonzeros", "sparsity", "zero_filters",
               "filters", "zero_input_channels", "input_channels", "flops",
               "nonzero_flops"}, ...],
   "total": {"params", "nonzeros", "sparsity", "compression", "flops", "nonzero_flops"}}
compression = params / nonzeros.  flops: 2 x the multiply-accumulates of the layer's weights
for one image (one input sample), as it is; nonzero_flops: the same counting only the nonzero
weights (what a sparse kernel, or the thinned net for whole filters, would do).  Other layers
(BatchNorm, ReLU, pooling, ...) are not counted.  For a convolution, a filter is one output
channel's weights and an input channel is everything that reads one channel of the bottom (for
a grouped convolution, of its group); for an InnerProduct they are an output neuron's row and
an input neuron's column."""
import csv
import io
import json
import os

import numpy as np

from .spec import prunable_layers

COLUMNS = ["name", "type", "shape", "params", "nonzeros", "sparsity", "zero_filters",
           "filters", "zero_input_channels", "input_channels", "flops", "nonzero_flops"]


def positions(net, layer):
    """How many times per image a prunable layer applies each of its weights: a
    Convolution's output positions, a Deconvolution's input positions, an InnerProduct's rows
    per sample (1 on axis 1)."""
    lid = net.layers.index(layer)
    if layer.type == "Deconvolution":
        b = net.bottom_vecs[lid][0]
        return b.count // max(b.shape[0] * layer.channels, 1)
    t = net.top_vecs[lid][0]
    return t.count // max(t.shape[0] * layer.num_output, 1)


def layer_flops(net, layer, weights=None):
    """2 x multiply-accumulates per image for `weights` weights (default: all of them)."""
    n = layer.blobs[0].count if weights is None else weights
    return 2 * int(n) * positions(net, layer)


def _zero_count(w, axis):
    other = tuple(i for i in range(w.ndim) if i != axis)
    return int(np.sum(~np.any(w, axis=other))), w.shape[axis]


def filter_stats(layer):
    """(zero filters, filters, zero input channels, input channels) of a weight."""
    w = layer.blobs[0].cpu_data
    if layer.type == "InnerProduct":
        out_axis, in_axis = (1, 0) if layer.transpose else (0, 1)
        return _zero_count(w, out_axis) + _zero_count(w, in_axis)
    g = layer.group
    if layer.type == "Deconvolution":
        # (C_in, O / g, *k): filters are output channels (group, o) along axis 1 per group.
        wg = w.reshape((g, w.shape[0] // g) + w.shape[1:])
        zf, nf = _zero_count(np.moveaxis(wg, 2, 1).reshape((-1,) + wg.shape[1:2] +
                                                           wg.shape[3:]), 0)
        zi, ni = _zero_count(w, 0)
        return zf, nf, zi, ni
    zf, nf = _zero_count(w, 0)
    # (O, C / g, *k): input channel (group j, local c) is read by w[j*O/g:(j+1)*O/g, c].
    wg = w.reshape((g, w.shape[0] // g) + w.shape[1:])
    per_group = np.moveaxis(wg, 2, 1)  # (g, C/g, O/g, *k)
    zi, ni = _zero_count(per_group.reshape((-1,) + per_group.shape[2:]), 0)
    return zf, nf, zi, ni


def _csr_bytes(w):
    """Bytes of a CSR form of the weight seen as (rows, cols): float32 values, column indices
    (uint16 when cols fit, else uint32) and int32 row pointers."""
    rows = w.shape[0] if w.ndim else 1
    cols = w.size // max(rows, 1)
    nnz = int(np.count_nonzero(w))
    return nnz * 4 + nnz * (2 if cols <= 65536 else 4) + (rows + 1) * 4


def sparsity_report(net, weights_path=None):
    """The report as a dict: "layers" and "total" (the JSON form) plus "sizes"."""
    rows, params, nonzeros, flops, nz_flops = [], 0, 0, 0, 0
    sparse_bytes = 0
    prunable = prunable_layers(net)
    for name, layer in prunable:
        w = layer.blobs[0].cpu_data
        nz = int(np.count_nonzero(w))
        zf, nf, zi, ni = filter_stats(layer)
        f, fz = layer_flops(net, layer), layer_flops(net, layer, nz)
        rows.append({"name": name, "type": layer.type, "shape": list(w.shape),
                     "params": int(w.size), "nonzeros": nz,
                     "sparsity": 1.0 - nz / w.size if w.size else 0.0,
                     "zero_filters": zf, "filters": nf,
                     "zero_input_channels": zi, "input_channels": ni,
                     "flops": f, "nonzero_flops": fz})
        params += w.size
        nonzeros += nz
        flops += f
        nz_flops += fz
        sparse_bytes += _csr_bytes(w)
    prunable_blobs = {id(layer.blobs[0]) for _, layer in prunable}
    other = 0
    seen = set()
    for lid, layer in enumerate(net.layers):
        for j, b in enumerate(layer.blobs):
            if net.param_owners[net.param_ids[lid][j]] != -1 or id(b) in seen:
                continue
            seen.add(id(b))
            if id(b) not in prunable_blobs:
                other += b.count
    total = {"params": int(params), "nonzeros": int(nonzeros),
             "sparsity": 1.0 - nonzeros / params if params else 0.0,
             "compression": params / nonzeros if nonzeros else float("inf"),
             "flops": int(flops), "nonzero_flops": int(nz_flops)}
    sizes = {"dense_bytes": 4 * (params + other),
             "sparse_bytes_estimate": sparse_bytes + 4 * other,
             "other_params": int(other)}
    if weights_path and os.path.isfile(weights_path):
        sizes["weights_file_bytes"] = os.path.getsize(weights_path)
    return {"layers": rows, "total": total, "sizes": sizes}


def to_json(report):
    return json.dumps({"layers": report["layers"], "total": report["total"]}, indent=2)


def to_csv(report):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in report["layers"]:
        w.writerow([r[c] if c != "shape" else "x".join(map(str, r[c])) for c in COLUMNS])
    t = report["total"]
    w.writerow(["total", "", "", t["params"], t["nonzeros"], t["sparsity"], "", "", "", "",
                t["flops"], t["nonzero_flops"]])
    return out.getvalue()


def _mb(n):
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _count(n):
    """A FLOP count in k / M / G (3 significant digits)."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(int(n))


def to_table(report):
    head = ["layer", "type", "shape", "params", "nonzeros", "sparsity", "zero filters",
            "zero in-ch", "FLOPs", "nonzero FLOPs"]
    body = []
    for r in report["layers"]:
        body.append([r["name"], r["type"], "x".join(map(str, r["shape"])), str(r["params"]),
                     str(r["nonzeros"]), f"{100 * r['sparsity']:.2f} %",
                     f"{r['zero_filters']}/{r['filters']}",
                     f"{r['zero_input_channels']}/{r['input_channels']}",
                     _count(r["flops"]), _count(r["nonzero_flops"])])
    t = report["total"]
    body.append(["total", "", "", str(t["params"]), str(t["nonzeros"]),
                 f"{100 * t['sparsity']:.2f} %", "", "", _count(t["flops"]),
                 _count(t["nonzero_flops"])])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    right = {3, 4, 5, 8, 9}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in body[:-1]] + [fmt(["-" * w for w in widths]), fmt(body[-1])]
    comp = t["compression"]
    lines.append(f"compression (params / nonzeros): "
                 f"{comp:.2f}x" if comp != float("inf") else "compression: inf (no nonzeros)")
    if t["flops"]:
        lines.append(f"FLOPs per image (2 x multiply-accumulates of these layers' weights): "
                     f"{_count(t['flops'])}, of nonzero weights {_count(t['nonzero_flops'])} "
                     f"({t['flops'] / max(t['nonzero_flops'], 1):.2f}x fewer)")
    s = report["sizes"]
    size = f"sizes: dense parameters {_mb(s['dense_bytes'])}"
    if "weights_file_bytes" in s:
        size += f" (weights file {_mb(s['weights_file_bytes'])})"
    size += (f"; sparse estimate {_mb(s['sparse_bytes_estimate'])} (CSR of the pruned "
             "weights: float32 values, 16/32-bit column indices, row pointers; other "
             "parameters dense)")
    lines.append(size)
    return "\n".join(lines)
