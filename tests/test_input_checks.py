"""Every value is checked where it enters: solver numbers, layer parameters, blob sizes,
BlobProto dims, HDF5 data.  Each bad value is a typed error naming the file, the layer and
the value, raised before anything is allocated or trained."""
import h5py
import numpy as np
import pytest

import caffe_lite
from caffe_lite.blob import MAX_BLOB_COUNT, Blob
from caffe_lite.errors import (BlobSizeError, CaffeLiteError, DataError, ModelFileError,
                               OutOfMemoryError, SolverError)
from caffe_lite.fillers import fill_array
from caffe_lite.io import proto_to_array
from caffe_lite.proto import caffe_pb2
from caffe_lite.solvers import get_solver, load_solver_param
from caffe_lite.solvers.lr_policy import learning_rate

TINY = ('net_param { layer { name: "d" type: "DummyData" top: "x" top: "y" '
        'dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } } '
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
        'inner_product_param { num_output: 2 } } '
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "l" } } ')
BASE = 'base_lr: 0.01 lr_policy: "fixed" max_iter: 10 '


def _solver_file(tmp_path, text):
    path = tmp_path / "solver.prototxt"
    path.write_text(TINY + text)
    return str(path)


# --- solver numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, message", [
    ('base_lr: -0.01 lr_policy: "fixed" max_iter: 10', "base_lr must be >= 0, got -0.01"),
    ('base_lr: nan lr_policy: "fixed" max_iter: 10', "base_lr must be finite, got nan"),
    ('base_lr: 0.01 lr_policy: "exp" gamma: -0.5 max_iter: 10', "needs gamma >= 0, got -0.5"),
    ('base_lr: 0.01 lr_policy: "inv" gamma: inf power: 1 max_iter: 10', "gamma must be finite"),
    ('base_lr: 0.01 lr_policy: "poly" power: -1 max_iter: 10', "needs power >= 0, got -1"),
    ('base_lr: 0.01 lr_policy: "exp" gamma: 10 max_iter: 1000',
     "no usable learning rate at iteration 1000"),
    ('base_lr: 0.01 lr_policy: "inv" gamma: 0.1 power: -3e38 max_iter: 100',
     "no usable learning rate at iteration 100"),
    ('base_lr: 0.01 lr_policy: "multistep" gamma: 1e38 ' +
     " ".join(f"stepvalue: {i}" for i in range(1, 10)) + " max_iter: 10",
     "no usable learning rate at iteration 9"),
    (BASE + "max_iter: -5", "max_iter must be >= 0, got -5"),
    (BASE + "display: -1", "display must be >= 0, got -1"),
    (BASE + "test_iter: -1 test_interval: 5", "test_iter must be >= 0, got -1"),
    (BASE + "momentum: nan", "momentum must be finite and >= 0, got nan"),
    (BASE + "weight_decay: -0.1", "weight_decay must be finite and >= 0"),
    (BASE + "clip_gradients: nan", "clip_gradients must be a number"),
    (BASE + 'type: "Adam" delta: 0', "delta must be finite and > 0 for Adam, got 0"),
    (BASE + 'type: "AdaGrad" delta: -1e-8', "delta must be finite and > 0 for AdaGrad"),
    (BASE + 'type: "Adam" momentum: 1', "momentum must be < 1 for Adam"),
    (BASE + 'type: "Adam" momentum: 0.9 momentum2: 1', "momentum2 must be in [0, 1)"),
    (BASE + 'snapshot_prefix: "snap/a\\000b"', "snapshot_prefix 'snap/a\\x00b' holds a NUL"),
    (BASE + 'snapshot_prefix: "snap/a\\nb"', "NUL or control character"),
])
def test_bad_solver_numbers_name_the_file_field_and_value(tmp_path, text, message):
    path = _solver_file(tmp_path, text)
    with pytest.raises(SolverError) as exc:
        load_solver_param(path)
    assert str(exc.value).startswith(f"{path}: ") and message in str(exc.value)


def test_every_bvlc_solver_still_loads(models_dir):
    loaded = 0
    for s in sorted(models_dir.glob("*/*solver*.prototxt")):
        try:
            param = load_solver_param(str(s))
        except SolverError as exc:   # pycaffe-generated nets that are not in ../shared
            assert "not found" in str(exc)
            continue
        assert param.base_lr > 0
        loaded += 1
    assert loaded >= 8


def test_the_rate_at_run_time_is_a_solver_error_not_an_overflow(tmp_path):
    """A rate that only breaks past max_iter (a resumed run, say) is still a SolverError."""
    param = load_solver_param(_solver_file(
        tmp_path, 'base_lr: 0.01 lr_policy: "step" gamma: 10 stepsize: 1 max_iter: 10'))
    assert learning_rate(param, 10, 0)[0] == pytest.approx(0.01 * 10 ** 10)
    with pytest.raises(SolverError, match="lr_policy 'step' .* at iteration 400: "):
        learning_rate(param, 400, 0)   # 10 ** 400 overflows
    param.lr_policy, param.power = "inv", 0.5
    param.gamma = 1.0
    with pytest.raises(SolverError, match="at iteration -3: "):
        learning_rate(param, -3, 0)    # (1 - 3) ** -0.5 would be a complex number


def test_a_good_solver_trains(tmp_path):
    s = get_solver(_solver_file(tmp_path, BASE + 'type: "Adam" momentum: 0.9 delta: 1e-8'))
    s.step(2)
    assert s.iter == 2


# --- layer parameters -------------------------------------------------------------------------
INPUT = ('layer { name: "in" type: "Input" top: "x" top: "y" input_param { '
         'shape { dim: 2 dim: 3 dim: 6 dim: 6 } shape { dim: 2 } } } ')


@pytest.mark.parametrize("layer, message", [
    ('type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 0 '
     'weight_filler { type: "xavier" } }', "num_output must be >= 1, got 0"),
    ('type: "BatchNorm" bottom: "x" top: "t" batch_norm_param { eps: 0 }',
     "eps must be > 0"),
    ('type: "BatchNorm" bottom: "x" top: "t" batch_norm_param { eps: 1e-50 }',
     "eps must be > 0"),   # 0 once stored as float32
    ('type: "BatchNorm" bottom: "x" top: "t" batch_norm_param { moving_average_fraction: 2 }',
     "moving_average_fraction must be in [0, 1], got 2"),
    ('type: "Convolution" bottom: "x" top: "t" convolution_param { num_output: 2 '
     'kernel_size: 3 dilation: 0 }', "dilation dimensions must be nonzero"),
    ('type: "Convolution" bottom: "x" top: "t" convolution_param { num_output: 0 '
     'kernel_size: 3 }', "num_output must be positive, got 0"),
    ('type: "Dropout" bottom: "x" top: "t" dropout_param { dropout_ratio: 0.99999999 }',
     "dropout_ratio must be in [0, 1)"),
    ('type: "Clip" bottom: "x" top: "t" clip_param { min: 2 max: 1 }',
     "min (2) must not exceed max (1)"),
    ('type: "ReLU" bottom: "x" top: "t" relu_param { negative_slope: nan }',
     "relu_param.negative_slope is nan; parameters must be finite"),
    ('type: "Scale" bottom: "x" top: "t" scale_param { filler { type: "constant" '
     'value: inf } }', "scale_param.filler.value is inf"),
    ('type: "Power" bottom: "x" top: "t" loss_weight: -inf', "loss_weight is -inf"),
    ('type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 2 '
     'weight_filler { type: "gaussian" std: -1 } }', "std must be >= 0, got -1"),
    ('type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 2 '
     'weight_filler { type: "uniform" min: 1 max: -1 } }', "min (1.0) is above max (-1.0)"),
])
def test_bad_layer_parameters_name_the_layer_and_value(tmp_path, layer, message):
    path = tmp_path / "net.prototxt"
    path.write_text(INPUT + 'layer { name: "bad" ' + layer + " }")
    with pytest.raises(CaffeLiteError) as exc:
        caffe_lite.Net(str(path), caffe_lite.TRAIN)
    text = str(exc.value)
    assert text.startswith(f"{path}: layer 'bad' (") and message in text, text


def test_fillers_on_empty_blobs_draw_nothing():
    for t in ("xavier", "msra", "positive_unitball", "gaussian"):
        out = fill_array(caffe_pb2.FillerParameter(type=t), (0, 5))
        assert out.shape == (0, 5)


# --- blob sizes -------------------------------------------------------------------------------
def test_blob_limit_is_caffes_and_checked_before_allocating():
    big = Blob(MAX_BLOB_COUNT)            # allowed: memory is only taken when first used
    assert big.count == 2**31 - 1
    with pytest.raises(BlobSizeError, match=r"2,147,483,648 elements; a blob holds at most"):
        big.reshape(2**31)
    with pytest.raises(BlobSizeError, match="negative"):
        Blob((3, -1))
    # a product that overflows int64 is still seen as too big
    with pytest.raises(BlobSizeError):
        Blob((2**32, 2**32, 2**32))


@pytest.mark.parametrize("layer, blob", [
    ('type: "Input" top: "z" input_param { shape { dim: 65536 dim: 65536 } }', "blob 'z'"),
    ('type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 2147483647 }',
     "blob 'bad[0]'"),
    ('type: "Convolution" bottom: "x" top: "t" convolution_param { num_output: 4 '
     'kernel_size: 3 pad: 50000 stride: 1 }', "blob 't'"),
    ('type: "Pooling" bottom: "x" top: "t" pooling_param { kernel_size: 2 '
     'stride: 2147483647 }', "the padded input"),
])
def test_huge_shapes_are_blob_size_errors_naming_the_layer(tmp_path, layer, blob):
    path = tmp_path / "net.prototxt"
    path.write_text(INPUT + 'layer { name: "bad" ' + layer + " }")
    with pytest.raises(BlobSizeError) as exc:
        caffe_lite.Net(str(path), caffe_lite.TRAIN)
    text = str(exc.value)
    assert text.startswith(f"{path}: layer 'bad' (") and blob in text and "2^31 - 1" in text


def test_out_of_memory_in_a_layer_is_typed_and_names_it(monkeypatch):
    net = caffe_lite.Net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "t" }',
                         caffe_lite.TEST)
    from caffe_lite.layers.neuron import ReLULayer

    def no_memory(self, bottom, top):
        raise MemoryError
    monkeypatch.setattr(ReLULayer, "forward_cpu", no_memory)
    with pytest.raises(OutOfMemoryError, match=r"layer 'r' \(ReLU\): out of memory in forward"):
        net.forward()


# --- BlobProto dims ---------------------------------------------------------------------------
@pytest.mark.parametrize("dims", [[-1, 4], [2**62, 4], [2**32, 2**32], [3, 2**31]])
def test_blobproto_dims_negative_or_overflowing_are_model_file_errors(dims):
    bp = caffe_pb2.BlobProto()
    bp.shape.dim.extend(dims)
    with pytest.raises(ModelFileError, match="not a valid blob shape"):
        proto_to_array(bp, "w.caffemodel: layer 'ip' blob 0")


def test_legacy_negative_dims_in_a_mean_file(tmp_path):
    from caffe_lite.data import load_mean_file
    bp = caffe_pb2.BlobProto(num=1, channels=-3, height=2, width=2)
    (tmp_path / "mean.binaryproto").write_bytes(bp.SerializeToString())
    with pytest.raises(ModelFileError, match=r"mean.binaryproto: blob shape \(1, -3, 2, 2\)"):
        load_mean_file(str(tmp_path / "mean.binaryproto"))


# --- HDF5 data and image lists ----------------------------------------------------------------
def _hdf5_net(tmp_path, listing):
    (tmp_path / "list.txt").write_text(listing)
    return caffe_lite.Net(f"layer {{ name: 'h' type: 'HDF5Data' top: 'data' top: 'label' "
                          f"hdf5_data_param {{ source: '{tmp_path / 'list.txt'}' "
                          f"batch_size: 2 }} }}", caffe_lite.TRAIN)


def test_damaged_hdf5_data_is_a_one_line_data_error(tmp_path):
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = np.ones((4, 3), np.float32)
        f["label"] = np.zeros(4, np.float32)
    data = (tmp_path / "d.h5").read_bytes()
    (tmp_path / "cut.h5").write_bytes(data[:len(data) // 2])
    for listing in (f"{tmp_path / 'cut.h5'}\n", f"{tmp_path}\n"):
        with pytest.raises(DataError) as exc:
            _hdf5_net(tmp_path, listing)
        assert "\n" not in str(exc.value) and "layer 'h' (HDF5Data)" in str(exc.value)


def test_image_list_with_a_nul_in_a_name(tmp_path):
    (tmp_path / "list.txt").write_text("a\0b.png 1\n")
    with pytest.raises(DataError, match="cannot read the image"):
        caffe_lite.Net(f"layer {{ name: 'i' type: 'ImageData' top: 'data' top: 'label' "
                       f"image_data_param {{ source: '{tmp_path / 'list.txt'}' "
                       f"batch_size: 1 }} }}", caffe_lite.TRAIN)


def test_resize_past_a_blobs_limit_is_refused_before_resizing():
    from caffe_lite.data.images import resize_linear
    with pytest.raises(DataError, match="exceed a blob's 2"):
        resize_linear(np.zeros((4, 4, 3), np.uint8), 100000, 100000)
