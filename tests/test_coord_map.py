"""coord_map: pycaffe's test_coord_map expectations, plus the Crop it builds run in a Net
(its offset really aligns the tops) and the legacy _h / _w parameters pycaffe refuses."""
import numpy as np
import pytest

import caffe_lite as caffe
from caffe_lite import layers as L, params as P
from caffe_lite.coord_map import (AxisMismatchException, compose, coord_map_from_to, crop,
                                  inverse)


def coord_net_spec(ks=3, stride=1, pad=0, pool=2, dstride=2, dpad=0):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    n.aux = L.Input(shape=dict(dim=[2, 1, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=ks, stride=stride, pad=pad)
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=pool, stride=pool, pad=0)
    deconv_ks = [s * 2 for s in dstride] if isinstance(dstride, list) else dstride * 2
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=deconv_ks, stride=dstride,
                               pad=dpad)
    return n


def test_conv_pool_deconv():
    n = coord_net_spec()
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, 0)       # 2x pool, 2x deconv: identity
    n = coord_net_spec(pool=4, dstride=4)
    assert coord_map_from_to(n.deconv, n.data) == (1, 1, -1)   # 4x: shift by one


def test_pass_through_and_1x1_conv_map_identically():
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.relu = L.ReLU(n.deconv)
    n.conv1x1 = L.Convolution(n.relu, num_output=10, kernel_size=1, stride=1, pad=0)
    for top in (n.relu, n.conv1x1):
        assert coord_map_from_to(top, n.data) == (ax, a, b)


@pytest.mark.parametrize("pad", [1, 7])
def test_padding(pad):
    n = coord_net_spec()
    _, a, b = coord_map_from_to(n.deconv, n.data)
    n = coord_net_spec(pad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b - pad)
    n = coord_net_spec(dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b + pad)
    n = coord_net_spec(pad=pad, dpad=pad)
    assert coord_map_from_to(n.deconv, n.data)[1:] == (a, b)


def test_multi_bottom_conv():
    n = coord_net_spec()
    n.conv_data, n.conv_aux = L.Convolution(n.data, n.aux, ntop=2, num_output=10,
                                            kernel_size=5, stride=2, pad=0)
    assert coord_map_from_to(n.conv_data, n.data) == coord_map_from_to(n.conv_aux, n.aux)


def test_rectangular_is_its_isotropic_parts():
    n3 = coord_net_spec(ks=3, stride=1, pad=0)
    n5 = coord_net_spec(ks=5, stride=2, pad=10)
    n35 = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    ax3, a3, b3 = coord_map_from_to(n3.deconv, n3.data)
    ax5, a5, b5 = coord_map_from_to(n5.deconv, n5.data)
    ax35, a35, b35 = coord_map_from_to(n35.deconv, n35.data)
    assert ax3 == ax5 == ax35
    assert (a3, b3) == (a35[0], b35[0]) and (a5, b5) == (a35[1], b35[1])


def test_legacy_h_w_parameters_map_like_the_repeated_ones():
    n = coord_net_spec(ks=[3, 5], stride=[1, 2], pad=[0, 10])
    m = caffe.NetSpec()
    m.data = L.Input(shape=dict(dim=[2, 1, 100, 100]))
    m.conv = L.Convolution(m.data, num_output=10, kernel_h=3, kernel_w=5, stride_h=1,
                           stride_w=2, pad_h=0, pad_w=10)
    m.pool = L.Pooling(m.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2)
    m.deconv = L.Deconvolution(m.pool, num_output=10, kernel_size=4, stride=2)
    ax, a, b = coord_map_from_to(m.deconv, m.data)
    ax2, a2, b2 = coord_map_from_to(n.deconv, n.data)
    assert ax == ax2 and (a == a2).all() and (b == b2).all()


def test_nd_conv():
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 100, 100, 100]))
    n.conv = L.Convolution(n.data, num_output=10, kernel_size=[3, 3, 3], stride=[1, 1, 1],
                           pad=[0, 1, 2])
    n.pool = L.Pooling(n.conv, pool=P.Pooling.MAX, kernel_size=2, stride=2, pad=0)
    n.deconv = L.Deconvolution(n.pool, num_output=10, kernel_size=4, stride=2, pad=0)
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    assert ax == 1 and len(a) == len(b) == 3 and (a == 1).all()
    assert b[0] - 1 == b[1] and b[1] - 1 == b[2]


@pytest.mark.parametrize("offset", [0, 3, 10])
def test_crop_of_crop(offset):
    n = coord_net_spec()
    ax, a, b = coord_map_from_to(n.deconv, n.data)
    n.crop = L.Crop(n.deconv, n.data, axis=2, offset=offset)
    assert coord_map_from_to(n.crop, n.data) == (ax, a, b + offset)


def test_crop_helper_builds_a_crop_that_aligns_in_a_net():
    n = coord_net_spec(pad=5)          # conv padded by 5: deconv output is 10 larger, shifted
    n.crop = crop(n.deconv, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and list(layer.bottom) == ["deconv", "data"]
    assert layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [5]
    net = caffe.Net(str(n.to_proto()), caffe.TEST)
    net.forward()
    assert net.blobs["crop"].data.shape == (2, 10, 100, 100)
    np.testing.assert_array_equal(net.blobs["crop"].data,
                                  net.blobs["deconv"].data[:, :, 5:105, 5:105])


def test_unconnected_tops_raise_runtime_error():
    n = coord_net_spec()
    n.ip = L.InnerProduct(n.deconv, num_output=10)
    with pytest.raises(RuntimeError, match="no chain of spatial layers"):
        coord_map_from_to(n.ip, n.data)


def test_scale_mismatch_and_negative_crop_fail_the_assertion():
    n = coord_net_spec(pool=3, dstride=2)
    with pytest.raises(AssertionError, match="scale mismatch"):
        crop(n.deconv, n.data)
    n = coord_net_spec(dpad=10)
    with pytest.raises(AssertionError, match="negative width"):
        crop(n.deconv, n.data)


def test_compose_and_inverse():
    m = (1, np.array([0.5]), np.array([-0.25]))
    ax, a, b = compose(m, inverse(m))
    assert ax == 1 and a == 1 and b == 0
    assert compose((None, 1, 0), (2, 2, 1)) == (2, 2, 1)
    with pytest.raises(AxisMismatchException):
        compose((1, 1, 0), (2, 1, 0))
