"""numba kernel of Concat (layers/concat_slice.py): a bottom's rows copied into their place in
the top, so that a concatenation runs natively inside a program (layers/program.py) and is
split over the spinning workers by rows.  Importing this module needs numba."""
from numba import njit

from ._native import arguments, f32_2, readonly, task


@njit(nogil=True, cache=True, boundscheck=False)
def copy_rows(src, dst, offset, r0, r1):
    """dst[r, offset:offset + I] = src[r] for rows [r0, r1) of src (R, I), dst (R, J)."""
    width = src.shape[1]
    for r in range(r0, r1):
        s = src[r]
        d = dst[r, offset:offset + width]
        for i in range(width):
            d[i] = s[i]


@task
def copy_rows_task(args, r0, r1, slot):
    p = arguments(args)
    src, i = f32_2(p, 0)
    dst, i = f32_2(p, i)
    copy_rows(readonly(src), dst, p[i], r0, r1)
