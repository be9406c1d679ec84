"""benchmarks/ab.py: side B runs with the --set values (from its preparation on), side A and
everything after with the values as shipped."""
import pytest

from benchmarks import ab
from caffe_lite.layers import inner_product, parallel


def test_sets_are_parsed_typed_and_checked():
    (module, attr, value), = ab._parse_sets(["caffe_lite.layers.parallel.MIN_SPIN_MACS=2e6"])
    assert module is parallel and attr == "MIN_SPIN_MACS" and value == 2_000_000
    assert isinstance(value, int)
    with pytest.raises(SystemExit, match="no attribute"):
        ab._parse_sets(["caffe_lite.layers.parallel.NO_SUCH=1"])
    with pytest.raises(SystemExit, match="module.ATTRIBUTE=value"):
        ab._parse_sets(["MIN_SPIN_MACS"])


def test_side_b_runs_with_its_values_and_they_are_put_back(monkeypatch):
    shipped = parallel.MIN_SPIN_FEW_ROWS_MACS
    seen = []
    original = parallel.prepare_few_rows

    def spying(*args):
        seen.append(parallel.MIN_SPIN_FEW_ROWS_MACS)
        return original(*args)
    monkeypatch.setattr(inner_product, "prepare_few_rows", spying)
    res = ab.compare("lenet_300_100", 1, ab._parse_sets(
        ["caffe_lite.layers.parallel.MIN_SPIN_FEW_ROWS_MACS=7"]), seconds=0.05)
    assert parallel.MIN_SPIN_FEW_ROWS_MACS == shipped
    assert set(seen) == {shipped, 7}          # each side's products prepared with its value
    assert res["a_ms"] > 0 and res["b_ms"] > 0 and res["runs"] >= 20
