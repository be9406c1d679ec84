"""numba kernels of Softmax's forward and of SoftmaxWithLoss (layers/softmax.py).  Importing this
module needs numba.

x, y (outer, channels, inner); rows [r0, r1) of `outer` per call.  Caffe's steps, in float32:
the maximum over the channels subtracted, exp, divided by the sum (taken in channel order)."""
import numpy as np
from numba import njit

from ._native import arguments, f32_3, readonly, task


@njit(nogil=True, cache=True, boundscheck=False)
def softmax_forward(x, y, r0, r1):
    c_n, i_n = x.shape[1], x.shape[2]
    if i_n == 1:
        for o in range(r0, r1):
            xs = x[o, :, 0]
            ys = y[o, :, 0]
            m = xs[0]
            for c in range(1, c_n):
                m = max(m, xs[c])
            s = np.float32(0)
            for c in range(c_n):
                e = np.exp(xs[c] - m)
                ys[c] = e
                s += e
            for c in range(c_n):
                ys[c] = ys[c] / s
        return
    m = np.empty(i_n, np.float32)
    s = np.empty(i_n, np.float32)
    for o in range(r0, r1):
        xo = x[o]
        yo = y[o]
        first = xo[0]
        for i in range(i_n):
            m[i] = first[i]
        for c in range(1, c_n):
            xc = xo[c]
            for i in range(i_n):
                m[i] = max(m[i], xc[i])
        for i in range(i_n):
            s[i] = 0
        for c in range(c_n):
            xc = xo[c]
            yc = yo[c]
            for i in range(i_n):
                e = np.exp(xc[i] - m[i])
                yc[i] = e
                s[i] += e
        for c in range(c_n):
            yc = yo[c]
            for i in range(i_n):
                yc[i] = yc[i] / s[i]


@njit(nogil=True, cache=True, boundscheck=False)
def _label(labels, o, i, c_n, has_ignore, ignore_label):
    """Caffe's static_cast<int> of a label: -1 for an ignored position, -2 for one outside
    [0, c_n) (or NaN)."""
    v = labels[o, i]
    if not v == v:
        return -2
    lab = int(v)
    if has_ignore and lab == ignore_label:
        return -1
    if lab < 0 or lab >= c_n:
        return -2
    return lab


@njit(nogil=True, cache=True, boundscheck=False)
def softmax_loss_forward(x, prob, labels, has_ignore, ignore_label, flt_min):
    """SoftmaxWithLoss's forward: prob (outer, channels, inner) = the softmax of x, then
    (-sum of log(max(prob at the label, flt_min)) in float64, count of non-ignored
    positions, flat index of the first invalid label or -1).  With an invalid label the sums
    are not meaningful: the caller reports the label."""
    softmax_forward(x, prob, 0, x.shape[0])
    c_n, i_n = x.shape[1], x.shape[2]
    loss = 0.0
    count = 0
    for o in range(x.shape[0]):
        for i in range(i_n):
            lab = _label(labels, o, i, c_n, has_ignore, ignore_label)
            if lab == -2:
                return loss, count, o * i_n + i
            if lab >= 0:
                loss -= np.float64(np.log(max(prob[o, lab, i], flt_min)))
                count += 1
    return loss, count, -1


@njit(nogil=True, cache=True, boundscheck=False)
def softmax_loss_backward(prob, labels, dx, has_ignore, ignore_label, scale):
    """dx = (prob - onehot(label)) * scale, 0 at ignored positions; returns the flat index of
    the first invalid label (dx then partly written), else -1."""
    c_n, i_n = prob.shape[1], prob.shape[2]
    zero = np.float32(0)
    for o in range(prob.shape[0]):
        for i in range(i_n):
            lab = _label(labels, o, i, c_n, has_ignore, ignore_label)
            if lab == -2:
                return o * i_n + i
            if lab == -1:
                for c in range(c_n):
                    dx[o, c, i] = zero
                continue
            for c in range(c_n):
                dx[o, c, i] = prob[o, c, i] * scale
            dx[o, lab, i] = (prob[o, lab, i] - np.float32(1)) * scale
    return -1


@task
def softmax_forward_task(args, r0, r1, slot):
    p = arguments(args)
    x, i = f32_3(p, 0)
    y, i = f32_3(p, i)
    softmax_forward(readonly(x), y, r0, r1)
