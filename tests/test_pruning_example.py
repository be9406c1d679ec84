"""examples/mnist/prune_finetune.py: a clear error without the data; the full run (slow) meets
the issue's bar: Han et al.'s profile with at most 0.2 points of accuracy lost."""
import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "examples" / "mnist" / "prune_finetune.py"


def _example():
    spec = importlib.util.spec_from_file_location("prune_finetune", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_missing_shared_folder_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _example().main(["--shared", str(tmp_path / "nowhere"), "--workdir", str(tmp_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "shared folder" in err and "--shared" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        _example().main(["--shared", str(tmp_path / "empty"), "--workdir", str(tmp_path)])
    assert "MNIST files not found" in capsys.readouterr().err


@pytest.mark.slow
def test_full_run_meets_the_target(mnist_dir, models_dir, tmp_path):
    out = _example().main(["--shared", str(models_dir.parent), "--workdir", str(tmp_path)])
    assert out["dense"] >= 0.97
    assert out["finetuned"] >= out["dense"] - 0.002
    rows = {r["name"]: r["sparsity"] for r in out["report"]["layers"]}
    assert rows == pytest.approx({"conv1": 0.34, "conv2": 0.88, "ip1": 0.92, "ip2": 0.81})
    assert out["report"]["total"]["compression"] > 11.5
    # the last stage: weights shared (conv 8 / fc 4 bits), fine-tuned, compressed
    c = out["compressed"]
    assert c["untied"] == 0
    assert c["quantized"] >= out["dense"] - 0.002 and c["loaded"] == c["quantized"]
    assert c["sizes"]["dense"] / c["sizes"]["compressed"] >= 39
    assert c["values"]["ip1"] <= 16 and c["values"]["conv2"] <= 256
    # ... and timed dense vs sparse (mode auto): the sparsest layers run sparse
    assert c["speed"]["layers"]["ip1"]["ran"] == "sparse"
    assert c["speed"]["dense_ms"] > 0 and c["speed"]["sparse_ms"] > 0


def test_speed_stage_times_a_compressed_model(models_dir, tmp_path, capsys):
    import numpy as np
    import caffe_lite as caffe
    from caffe_lite.compression import compress
    from caffe_lite.layers import jit
    net = caffe.Net(str(models_dir / "bvlc_mnist" / "lenet.prototxt"), caffe.TEST)
    g = np.random.default_rng(0)
    for name, keep in {"conv1": 0.66, "conv2": 0.12, "ip1": 0.08, "ip2": 0.19}.items():
        w = net.params[name][0]
        w.data[...] = g.standard_normal(w.shape) * (g.random(w.shape) < keep)
    net.save(str(tmp_path / "pruned.caffemodel"))
    compress(str(tmp_path / "pruned.caffemodel"), str(tmp_path / "pruned.cmodel"))
    t = _example().speed_stage(str(models_dir.parent), str(tmp_path / "pruned.cmodel"),
                               repeats=3)
    out = capsys.readouterr().out
    assert "dense vs sparse (mode auto)" in out and "ip1" in out
    expected = "sparse" if jit.kernels("sparse") is not None else "dense"
    assert t["layers"]["ip1"]["ran"] == expected and t["layers"]["conv1"]["ran"] == "dense"


def test_gpu_flag_without_a_gpu_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    from caffe_lite.backend import gpu
    monkeypatch.setattr(gpu, "_ctx", dict(gpu._ctx, checked=True, ok=False,
                                          reason="no CUDA device present"))
    with pytest.raises(SystemExit) as exc:
        _example().main(["--gpu", "--shared", str(tmp_path), "--workdir", str(tmp_path)])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("prune_finetune.py: error: --gpu 0: GPU mode requested but "
                          "unavailable: no CUDA device present") and "\n" not in err


@pytest.mark.gpu
def test_short_run_on_the_gpu(mnist_dir, models_dir, tmp_path):
    """A few iterations of every stage in GPU mode (on the emulator where there is no GPU):
    the pruned profile is reached exactly, and the numbers are sane."""
    from caffe_lite.backend import gpu, state
    ok, reason = gpu.available()
    if not ok:
        pytest.skip(f"needs PyCUDA and a CUDA device: {reason}")
    modes = []
    mod = _example()
    orig = mod.SGDSolver.step

    def step(self, n):
        modes.append(state.mode())
        return orig(self, n)
    mod.SGDSolver.step = step
    try:
        out = mod.main(["--gpu", "--shared", str(models_dir.parent), "--workdir", str(tmp_path),
                        "--train-iters", "4", "--finetune-iters", "4", "--steps", "1",
                        "--every", "2", "--test-batches", "2", "--bits", "none"])
    finally:
        mod.SGDSolver.step = orig
        state.set_mode_cpu()
    assert out["device"] == "GPU 0" and modes and set(modes) == {state.GPU}
    rows = {r["name"]: r["sparsity"] for r in out["report"]["layers"]}
    assert rows == pytest.approx({"conv1": 0.34, "conv2": 0.88, "ip1": 0.92, "ip2": 0.81})
    assert 0 <= out["finetuned"] <= 1 and 0.05 < out["dense"] <= 1
