"""The sparsity report: one row per prunable layer's weight blob, totals, the compression rate,
and size estimates.

JSON form (`caffe-lite sparsity -format json`):
  {"layers": [{"name", "type", "shape", "params", "nonzeros", "sparsity", "zero_filters",
               "filters", "zero_input_channels", "input_channels"}, ...],
   "total": {"params", "nonzeros", "sparsity", "compression"}}
compression = params / nonzeros.  For a convolution, a filter is one output channel's weights
and an input channel is everything that reads one channel of the bottom (for a grouped
convolution, of its group); for an InnerProduct they are an output neuron's row and an input
neuron's column."""
import csv
import io
import json
import os

import numpy as np

from .spec import prunable_layers

COLUMNS = ["name", "type", "shape", "params", "nonzeros", "sparsity", "zero_filters",
           "filters", "zero_input_channels", "input_channels"]


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
    rows, params, nonzeros = [], 0, 0
    sparse_bytes = 0
    prunable = prunable_layers(net)
    for name, layer in prunable:
        w = layer.blobs[0].cpu_data
        nz = int(np.count_nonzero(w))
        zf, nf, zi, ni = filter_stats(layer)
        rows.append({"name": name, "type": layer.type, "shape": list(w.shape),
                     "params": int(w.size), "nonzeros": nz,
                     "sparsity": 1.0 - nz / w.size if w.size else 0.0,
                     "zero_filters": zf, "filters": nf,
                     "zero_input_channels": zi, "input_channels": ni})
        params += w.size
        nonzeros += nz
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
             "compression": params / nonzeros if nonzeros else float("inf")}
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
    w.writerow(["total", "", "", t["params"], t["nonzeros"], t["sparsity"], "", "", "", ""])
    return out.getvalue()


def _mb(n):
    return f"{n / 1e6:.3f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def to_table(report):
    head = ["layer", "type", "shape", "params", "nonzeros", "sparsity", "zero filters",
            "zero in-ch"]
    body = []
    for r in report["layers"]:
        body.append([r["name"], r["type"], "x".join(map(str, r["shape"])), str(r["params"]),
                     str(r["nonzeros"]), f"{100 * r['sparsity']:.2f} %",
                     f"{r['zero_filters']}/{r['filters']}",
                     f"{r['zero_input_channels']}/{r['input_channels']}"])
    t = report["total"]
    body.append(["total", "", "", str(t["params"]), str(t["nonzeros"]),
                 f"{100 * t['sparsity']:.2f} %", "", ""])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    right = {3, 4, 5}

    def fmt(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    lines = [fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(r) for r in body[:-1]] + [fmt(["-" * w for w in widths]), fmt(body[-1])]
    comp = t["compression"]
    lines.append(f"compression (params / nonzeros): "
                 f"{comp:.2f}x" if comp != float("inf") else "compression: inf (no nonzeros)")
    s = report["sizes"]
    size = f"sizes: dense parameters {_mb(s['dense_bytes'])}"
    if "weights_file_bytes" in s:
        size += f" (weights file {_mb(s['weights_file_bytes'])})"
    size += (f"; sparse estimate {_mb(s['sparse_bytes_estimate'])} (CSR of the pruned "
             "weights: float32 values, 16/32-bit column indices, row pointers; other "
             "parameters dense)")
    lines.append(size)
    return "\n".join(lines)
