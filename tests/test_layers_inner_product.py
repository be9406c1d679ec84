import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import blob, check_gradient, forward, layer_from_text

GAUSS = 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 }'


def ip(params):
    return layer_from_text(f'type: "InnerProduct" inner_product_param {{ {params} }}')


def test_forward_hand_values_and_shapes():
    layer = ip("num_output: 2")
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32).reshape(2, 3, 1, 1)
    top = Blob()
    layer.setup([blob(x)], [top])
    assert layer.blobs[0].shape == (2, 3) and layer.blobs[1].shape == (2,)
    # default fillers are constant 0
    assert not layer.blobs[0].data.any() and not layer.blobs[1].data.any()
    layer.blobs[0].data[...] = [[1, 0, -1], [0.5, 0.5, 0.5]]
    layer.blobs[1].data[...] = [10, -1]
    layer.forward([blob(x)], [top])
    assert top.shape == (2, 2)
    np.testing.assert_allclose(top.data, [[1 - 3 + 10, 3 - 1], [4 - 6 + 10, 7.5 - 1]])


def test_axis_2_keeps_leading_axes():
    layer = ip("num_output: 4 axis: 2 bias_term: false " + GAUSS)
    x = blob((2, 3, 5), seed=0)
    top, = forward(layer, [x])
    assert top.shape == (2, 3, 4) and len(layer.blobs) == 1
    w = layer.blobs[0].data
    assert w.shape == (4, 5)
    np.testing.assert_allclose(top.data, np.einsum("abk,nk->abn", x.data, w), rtol=1e-5)


def test_axis_negative_and_flatten():
    layer = ip("num_output: 3 axis: -2 " + GAUSS)
    x = blob((2, 4, 2, 3), seed=1)  # axis -2 == 2: K = 2*3, M = 2*4
    top, = forward(layer, [x])
    assert top.shape == (2, 4, 3) and layer.blobs[0].shape == (3, 6)
    ref = x.data.reshape(8, 6) @ layer.blobs[0].data.T + layer.blobs[1].data
    np.testing.assert_allclose(top.data.reshape(8, 3), ref, rtol=1e-5, atol=1e-6)


def test_transpose_stores_k_by_n_and_matches():
    plain = ip("num_output: 3 " + GAUSS)
    trans = ip("num_output: 3 transpose: true " + GAUSS)
    x = blob((2, 4), seed=2)
    t0, = forward(plain, [x])
    top = Blob()
    trans.setup([x], [top])
    assert trans.blobs[0].shape == (4, 3)
    trans.blobs[0].data[...] = plain.blobs[0].data.T
    trans.blobs[1].data[...] = plain.blobs[1].data
    trans.forward([x], [top])
    np.testing.assert_allclose(top.data, t0.data, rtol=1e-6)


@pytest.mark.parametrize("params", ["num_output: 3", "num_output: 3 transpose: true",
                                    "num_output: 2 axis: 2", "num_output: 2 bias_term: false"])
def test_gradient(params):
    layer = ip(params + " " + GAUSS)
    check_gradient(layer, [blob((2, 3, 4), seed=3)])


def test_param_gradients_accumulate_and_mask():
    layer = ip("num_output: 2 " + GAUSS)
    x = blob((3, 4), seed=4)
    top, = forward(layer, [x])
    assert layer.blobs[0].has_mask and not layer.blobs[1].has_mask
    layer.blobs[0].mask[0, 1] = 0
    top.diff[...] = 1
    layer.backward([top], [True], [x])
    once = layer.blobs[0].diff.copy()
    np.testing.assert_allclose(once[1], x.data.sum(0), rtol=1e-6)
    assert once[0, 1] == 0  # pruned weight gets no gradient
    np.testing.assert_allclose(layer.blobs[1].diff, [3, 3])
    np.testing.assert_allclose(x.diff, np.tile(layer.blobs[0].data.sum(0), (3, 1)), rtol=1e-6)
    layer.backward([top], [True], [x])
    np.testing.assert_allclose(layer.blobs[0].diff, 2 * once, rtol=1e-6)


def test_input_size_change_is_an_error():
    layer = ip("num_output: 2")
    top = Blob()
    layer.setup([blob((2, 3, 4))], [top])
    layer.reshape([blob((5, 3, 4))], [top])  # M may change
    assert top.shape == (5, 2)
    with pytest.raises(LayerSetupError, match=r"incompatible.*K = 15.*K = 12"):
        layer.reshape([blob((2, 3, 5))], [top])


def test_loaded_blob_shape_checked():
    layer = layer_from_text('type: "InnerProduct" inner_product_param { num_output: 2 } '
                            'blobs { shape { dim: 2 dim: 5 } data: [0,0,0,0,0,0,0,0,0,0] } '
                            'blobs { shape { dim: 2 } data: [0,0] }')
    with pytest.raises(LayerSetupError, match=r"\(2, 5\).*\(2, 3\)"):
        forward(layer, [blob((1, 3))])


def test_bad_axis():
    with pytest.raises(LayerSetupError, match="axis"):
        forward(ip("num_output: 2 axis: 3"), [blob((2, 3))])
