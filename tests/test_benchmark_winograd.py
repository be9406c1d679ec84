"""benchmarks/winograd.py: both engines on one shape, their outputs compared, the thresholds
put back."""
import pytest

from caffe_lite.layers import jit, winograd


@pytest.mark.skipif(jit.kernels("winograd") is None, reason="the Winograd path needs numba")
def test_a_case_times_both_engines_on_the_same_layer():
    from benchmarks import winograd as bench
    shipped = winograd.MIN_CHANNEL_RATIO, winograd.MIN_TILES
    r = bench.case("small", 1, 2, 3, (9, 7), 1, repeats=1, warmup=0)
    assert (winograd.MIN_CHANNEL_RATIO, winograd.MIN_TILES) == shipped
    assert r["im2col_ms"] > 0 and r["winograd_ms"] > 0
    assert r["ratio"] == pytest.approx(r["winograd_ms"] / r["im2col_ms"])
    assert r["max_rel_error"] < 1e-4           # (the same convolution, float32 rounding)
    assert r["worth"] is False                 # (2 -> 3 channels: im2col's in a net)
