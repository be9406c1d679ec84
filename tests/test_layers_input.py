"""Input: shapes its tops from input_param."""
import numpy as np
import pytest

from caffe_lite.blob import Blob
from caffe_lite.errors import LayerSetupError
from caffe_lite.testing import layer_from_text


def setup(text, ntop):
    layer = layer_from_text(text)
    top = [Blob() for _ in range(ntop)]
    layer.setup([], top)
    return layer, top


def test_one_shape_for_every_top():
    layer, top = setup('type: "Input" input_param { shape { dim: 10 dim: 3 dim: 2 dim: 5 } }', 2)
    assert [t.shape for t in top] == [(10, 3, 2, 5), (10, 3, 2, 5)]


def test_one_shape_per_top():
    _, top = setup('type: "Input" input_param { shape { dim: 4 dim: 1 dim: 28 dim: 28 } '
                   'shape { dim: 4 } }', 2)
    assert top[0].shape == (4, 1, 28, 28) and top[1].shape == (4,)


def test_no_shape_leaves_tops_to_the_user():
    layer, top = setup('type: "Input"', 1)
    assert top[0].shape == ()
    top[0].reshape(2, 3)
    layer.reshape([], top)
    assert top[0].shape == (2, 3)  # reshape does not undo the user's shape


def test_forward_keeps_user_data_and_backward_is_a_no_op():
    layer, top = setup('type: "Input" input_param { shape { dim: 2 dim: 2 } }', 1)
    top[0].data[...] = [[1, 2], [3, 4]]
    assert layer.forward([], top) == 0.0
    np.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4]])
    layer.backward(top, [], [])
    np.testing.assert_array_equal(top[0].data, [[1, 2], [3, 4]])


def test_errors():
    with pytest.raises(LayerSetupError, match="2 tops vs. 3 shapes"):
        setup('type: "Input" input_param { shape { dim: 1 } shape { dim: 2 } shape { dim: 3 } }',
              2)
    with pytest.raises(LayerSetupError, match="at least 1 top"):
        setup('type: "Input" input_param { shape { dim: 1 } }', 0)
    with pytest.raises(LayerSetupError, match="exactly 0 bottom"):
        layer_from_text('type: "Input"').setup([Blob((2,))], [Blob()])
    with pytest.raises(LayerSetupError, match="negative dimension"):
        setup('type: "Input" input_param { shape { dim: 2 dim: -1 } }', 1)
