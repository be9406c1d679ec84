"""numba kernel of Softmax's forward (layers/softmax.py).  Importing this module needs numba.

x, y (outer, channels, inner); rows [r0, r1) of `outer` per call.  Caffe's steps, in float32:
the maximum over the channels subtracted, exp, divided by the sum (taken in channel order)."""
import numpy as np
from numba import njit


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
