"""The compressed model file: Huffman coding and relative indices by hand, the byte layout of
docs/compression.md by hand, bit-exact round trips, loading through Net / copy_from, damaged
files (a little fuzzing) and Deep Compression's published layout."""
import struct
import zlib

import numpy as np
import pytest

import caffe_lite
from caffe_lite.compression import deepcompression, format as F, huffman, positions
from caffe_lite.compression.quantize import quantize_net
from caffe_lite.errors import ModelFileError
from caffe_lite.io import load_weights, parse_text
from caffe_lite.proto import caffe_pb2


# --- Huffman ---------------------------------------------------------------------------------
def test_canonical_huffman_by_hand():
    # freqs 0:5 1:1 2:1 3:2 -> lengths 1, 3, 3, 2; canonical codes 0, 110, 111, 10.
    lengths = huffman.code_lengths([5, 1, 1, 2])
    np.testing.assert_array_equal(lengths, [1, 3, 3, 2])
    np.testing.assert_array_equal(huffman.canonical_codes(lengths), [0b0, 0b110, 0b111, 0b10])
    symbols = [0, 3, 1, 0, 2, 0, 0, 3, 0]       # those frequencies
    data = huffman.encode(symbols)              # 0 10 110 0 111 0 0 10 0: 15 bits
    assert data == (b"\x04\x00\x00\x00" + bytes([0x31, 0x23])        # A = 4; nibbles 1,3 3,2
                    + b"\x0f\x00" + bytes([0b01011001, 0b11001000]))  # block bits; the codes
    out, end = huffman.decode(data + b"tail", 0, len(symbols))
    np.testing.assert_array_equal(out, symbols)
    assert end == len(data)


@pytest.mark.parametrize("n", [0, 1, 2, 1023, 1024, 1025, 5000])
def test_huffman_round_trips(n, rng):
    for symbols in (rng.geometric(0.1, n) - 1, rng.integers(0, 300, n), np.full(n, 7)):
        data = huffman.encode(symbols)
        out, end = huffman.decode(data, 0, n)
        np.testing.assert_array_equal(out, symbols)
        freqs = np.bincount(symbols) if n else np.zeros(0, np.int64)
        assert end == len(data) == huffman.stream_bytes(freqs, n)


def test_huffman_lengths_are_limited():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    lengths = huffman.code_lengths(fib)
    assert lengths.max() == huffman.MAX_BITS
    assert np.sum(2.0 ** -lengths.astype(float)) <= 1.0
    symbols = np.repeat(np.arange(40), np.minimum(fib, 50))
    out, _ = huffman.decode(huffman.encode(symbols), 0, symbols.size)
    np.testing.assert_array_equal(out, symbols)


# --- relative indices --------------------------------------------------------------------------
def test_relative_indices_with_padding_zeros_by_hand():
    # Han et al.'s rule with 3-bit indices: a gap over 8 gets a padding entry 8 positions on.
    symbols, padding = positions.encode([1, 4, 15], 3)
    np.testing.assert_array_equal(symbols, [1, 2, 7, 2])   # gaps 2, 3, 11 = 8 (pad) + 3
    np.testing.assert_array_equal(padding, [False, False, True, False])
    np.testing.assert_array_equal(positions.decode(symbols), [1, 4, 12, 15])
    symbols, padding = positions.encode([0, 40], 3)       # gap 40 = 8+8+8+8+8: four pads
    np.testing.assert_array_equal(symbols, [0, 7, 7, 7, 7, 7])
    assert padding.sum() == 4


# --- the byte layout by hand -------------------------------------------------------------------
TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 20 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 1 } }
"""


def _tiny_file():
    """A compressed file built by hand as docs/compression.md describes it: the InnerProduct
    weight (1 x 20) holds 0.5 at positions 1 and 18, stored SHARED with 3-bit indices."""
    net = parse_text(TINY, caffe_pb2.NetParameter())
    skel = caffe_pb2.NetParameter()
    skel.CopyFrom(net)
    ip = skel.layer[1]
    ip.blobs.add().shape.dim.extend([1, 20])
    ip.blobs.add().shape.dim.extend([1])
    skeleton = zlib.compress(skel.SerializeToString(), 9)
    # positions 1, 18, width 3: gaps 2, 17 -> symbols 1, 7 (pad), 7 (pad), 0.  Huffman:
    # 7 -> '0', 0 -> '10', 1 -> '11'; stream 11 0 0 10 -> 0xC8.
    pos_stream = (b"\x08\x00\x00\x00" + bytes([0x22, 0x00, 0x00, 0x10]) + b"\x06\x00"
                  + bytes([0xC8]))
    # value symbols 1, 0, 0, 1 (0: the padding zero, 1: codebook[0] = 0.5): '1' '0' '0' '1'.
    val_stream = b"\x02\x00\x00\x00" + bytes([0x11]) + b"\x04\x00" + bytes([0x90])
    weight = (b"\x01" + b"\x03" + b"\x04\x00\x00\x00" + pos_stream
              + b"\x01\x00\x00\x00" + struct.pack("<f", 0.5) + val_stream)
    bias = b"\x00" + struct.pack("<f", -1.5)
    body = skeleton + weight + bias
    length = 24 + len(body) + 4
    head = b"\x89CLCM\r\n\x1a" + struct.pack("<HHQI", 1, 0, length, len(skeleton))
    data = head + body
    return data + struct.pack("<I", zlib.crc32(data))


def test_a_file_written_by_hand_from_the_docs_loads(tmp_path):
    path = tmp_path / "tiny.weights"          # the extension does not matter
    path.write_bytes(_tiny_file())
    net = caffe_lite.Net(TINY, caffe_lite.TEST, weights=str(path))
    w = np.zeros(20, np.float32)
    w[[1, 18]] = 0.5
    np.testing.assert_array_equal(net.params["ip"][0].data.ravel(), w)
    np.testing.assert_array_equal(net.params["ip"][0].mask.ravel(), w != 0)
    np.testing.assert_array_equal(net.params["ip"][1].data, [-1.5])
    # The writer reads it back the same way, and its own file decodes to the same values.
    proto = F.read(str(path))
    data, stats = F.encode_net_param(proto)
    assert [(s.layer, s.index) for s in stats] == [("ip", 0), ("ip", 1)]
    again = F.decode_bytes(data)
    assert again.SerializeToString() == proto.SerializeToString()


# --- round trips -------------------------------------------------------------------------------
@pytest.fixture
def lenet(models_dir, tmp_path):
    """LeNet (deploy) pruned by magnitude to Han et al.'s profile, random weights."""
    text = (models_dir / "bvlc_mnist" / "lenet.prototxt").read_text()
    model = tmp_path / "lenet.prototxt"
    model.write_text(text.replace("dim: 64", "dim: 2"))
    caffe_lite.set_random_seed(5)
    net = caffe_lite.Net(str(model), caffe_lite.TEST)
    from caffe_lite.pruning import prune_net
    prune_net(net, 'layer { name: "conv1" sparsity: 0.34 } layer { name: "conv2" sparsity: 0.88 }'
                   ' layer { name: "ip1" sparsity: 0.92 } layer { name: "ip2" sparsity: 0.81 }')
    rng = np.random.default_rng(5)
    for p in net.params.values():
        p[1].data[...] = rng.standard_normal(p[1].shape)
    return model, net


def test_quantised_model_round_trips_bit_exact(lenet, tmp_path):
    model, net = lenet
    quantize_net(net, "conv=8,fc=5")
    ref = tmp_path / "q.caffemodel"
    net.save(str(ref))
    packed = tmp_path / "q.cmodel"
    stats = F.compress(str(ref), str(packed))
    assert {(s.layer, s.kind) for s in stats if s.index == 0} == \
        {(n, F.SHARED) for n in ("conv1", "conv2", "ip1", "ip2")}
    assert all(s.kind == F.DENSE for s in stats if s.index == 1)
    out = tmp_path / "back.caffemodel"
    F.decompress(str(packed), str(out))
    assert out.read_bytes() == ref.read_bytes()
    size = packed.stat().st_size
    assert size < ref.stat().st_size / 30
    # Net / copy_from load the compressed file directly; masks follow the positions.
    other = caffe_lite.Net(str(model), caffe_lite.TEST, weights=str(packed))
    for name in net.params:
        for a, b in zip(net.params[name], other.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(other.params[name][0].mask, net.params[name][0].mask)


def test_unquantised_model_is_stored_losslessly(lenet, tmp_path):
    model, net = lenet
    w = net.params["ip1"][0]
    w.data.ravel()[np.flatnonzero(w.mask.ravel() == 0)[:7]] = -0.0   # signed zeros
    data, stats = F.encode_net_param(net.to_proto())
    kinds = {s.layer: s.kind for s in stats if s.index == 0}
    assert kinds["ip1"] == F.SPARSE          # 32,000 distinct values: float32 per entry
    back = F.decode_bytes(data)
    for la, lb in zip(net.to_proto().layer, back.layer):
        for a, b in zip(la.blobs, lb.blobs):
            a, b = np.asarray(a.data, np.float32), np.asarray(b.data, np.float32)
            np.testing.assert_array_equal(a, b)    # -0.0 == +0.0: values, not bits
            nz = a != 0
            np.testing.assert_array_equal(a[nz].view(np.uint32), b[nz].view(np.uint32))
            assert not np.signbit(b[~nz]).any()  # zeros come back as +0.0
    # the smallest of the three kinds is taken: a dense weight stays dense
    dense = caffe_pb2.NetParameter()
    dense.CopyFrom(net.to_proto())
    conv1 = next(lp for lp in dense.layer if lp.name == "conv1")
    conv1.blobs[0].data[:] = np.linspace(0.1, 1, 500).astype(np.float32).tolist()
    _, stats = F.encode_net_param(dense)
    assert next(s for s in stats if s.layer == "conv1" and s.index == 0).kind == F.DENSE


def test_layers_without_weights_and_unknown_types_are_kept(tmp_path):
    text = TINY + ('layer { name: "bn" type: "BatchNorm" bottom: "ip" top: "ip" }\n'
                   'layer { name: "odd" type: "SomethingElse" bottom: "ip" top: "odd" }\n')
    net = parse_text(text, caffe_pb2.NetParameter())
    rng = np.random.default_rng(1)
    for lp, shapes in ((net.layer[1], [(1, 20), (1,)]), (net.layer[2], [(1,), (1,), (1,)]),
                       (net.layer[3], [(3, 4)])):
        for s in shapes:
            from caffe_lite.io import array_to_proto
            array_to_proto(rng.standard_normal(s).astype(np.float32), lp.blobs.add())
    data, _ = F.encode_net_param(net)
    assert F.decode_bytes(data).SerializeToString() == net.SerializeToString()


# --- damaged files -----------------------------------------------------------------------------
def test_damaged_files_are_clear_errors(tmp_path):
    data = _tiny_file()
    path = tmp_path / "m.cmodel"
    cases = {"truncated": data[:-9], "checksum": data[:40] + bytes([data[40] ^ 1]) + data[41:],
             "version": data[:8] + b"\x02\x00" + data[10:], "empty": data[:5],
             "header": data[:12]}
    messages = {"truncated": "truncated or damaged", "checksum": "checksum mismatch",
                "version": "version 2", "empty": "not a valid binary caffemodel",
                "header": "12 bytes: truncated"}
    for name, bad in cases.items():
        path.write_bytes(bad)
        with pytest.raises(ModelFileError, match=messages[name]) as exc:
            caffe_lite.Net(TINY, caffe_lite.TEST, weights=str(path))
        assert str(path) in str(exc.value)


def _with_crc(data):
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


SMALL = """name: "small"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 10 weight_filler { type: "gaussian" } } }
"""


def test_fuzz_damaged_files():
    """Random byte flips and cuts: always a ModelFileError (the checksum); with the checksum
    made to fit, the structure checks still give a ModelFileError or a file of the right
    shapes -- never another exception."""
    net = caffe_lite.Net(SMALL, caffe_lite.TEST)
    from caffe_lite.pruning import prune_net
    prune_net(net, sparsity=0.7)
    quantize_net(net, "conv=4,fc=3")
    data, stats = F.encode_net_param(net.to_proto())
    assert {s.kind for s in stats} == {F.DENSE, F.SHARED}
    rng = np.random.default_rng(11)
    for trial in range(300):
        bad = bytearray(data)
        for _ in range(rng.integers(1, 4)):
            bad[rng.integers(0, len(bad))] ^= int(rng.integers(1, 256))
        if trial % 5 == 0:
            bad = bad[:rng.integers(0, len(bad))]
        with pytest.raises(ModelFileError):
            F.decode_bytes(bytes(bad), "fuzz")
        if len(bad) >= 32:
            fixed = bytearray(_with_crc(bytes(bad)))
            fixed[12:20] = struct.pack("<Q", len(fixed))
            fixed = _with_crc(bytes(fixed))
            try:
                back = F.decode_bytes(fixed, "fuzz")
            except ModelFileError:
                continue
            for lp in back.layer:
                for b in lp.blobs:
                    assert len(b.data) == int(np.prod(b.shape.dim))


# --- Deep Compression's published layout ------------------------------------------------------
def _write_deep_compression(path, weights, biases, names):
    """An independent writer of the layout of songhan/Deep-Compression-AlexNet's files:
    uint32 nz_num per layer, then per layer codebook (2^8 for conv, 2^4 otherwise, [0] = 0),
    bias, codebook indices (4-bit ones two per byte, low half first) and 4-bit relative
    indices (two per byte, low half first), padding entries every 16 positions."""
    streams, nz_num = [], []
    for name in names:
        w = weights[name].ravel()
        bits = 8 if "conv" in name else 4
        values = np.unique(w[w != 0])
        assert values.size < 2 ** bits
        codebook = np.zeros(2 ** bits, np.float32)
        codebook[1:1 + values.size] = values
        ind, spm, last = [], [], -1
        for p in np.flatnonzero(w):
            while p - last > 16:
                ind.append(15)
                spm.append(0)
                last += 16
            ind.append(p - last - 1)
            spm.append(1 + int(np.searchsorted(values, w[p])))
            last = p
        nz_num.append(len(ind))

        def nibbles(v):
            v = list(v) + [0] * (len(v) % 2)
            return bytes(v[i] | (v[i + 1] << 4) for i in range(0, len(v), 2))
        spm_bytes = bytes(spm) if bits == 8 else nibbles(spm)
        streams.append(codebook.astype("<f4").tobytes() + biases[name].astype("<f4").tobytes()
                       + spm_bytes + nibbles(ind))
    path.write_bytes(np.asarray(nz_num, "<u4").tobytes() + b"".join(streams))


def test_deep_compression_files_load_in_one_call(lenet, tmp_path):
    model, net = lenet
    quantize_net(net, "conv=7,fc=4")          # < 2^8 and < 2^4 values: index 0 is the zero
    for name in ("ip1", "ip2"):               # 4-bit codebooks hold 15 values
        w = net.params[name][0]
        live = w.mask.astype(bool)
        vals = np.unique(w.data[live])
        w.data[live] = np.minimum(w.data[live], vals[min(14, vals.size - 1)])
    names = ["conv1", "conv2", "ip1", "ip2"]
    weights = {n: net.params[n][0].data.copy() for n in names}
    biases = {n: net.params[n][1].data.copy() for n in names}
    weights["ip1"][0, :60] = 0                 # a long gap: padding entries
    weights["ip1"][0, 70] = weights["ip1"][0, 71] = biases["ip1"][0] * 0 + \
        np.unique(weights["ip1"][weights["ip1"] != 0])[0]
    dc = tmp_path / "lenet_compressed.net"
    _write_deep_compression(dc, weights, biases, names)
    loaded = caffe_lite.Net(str(model), caffe_lite.TEST, weights=str(dc))
    for n in names:
        np.testing.assert_array_equal(loaded.params[n][0].data, weights[n])
        np.testing.assert_array_equal(loaded.params[n][1].data, biases[n])
        np.testing.assert_array_equal(loaded.params[n][0].mask, weights[n] != 0)
    # A file of another size is not taken for one (it is then read as a caffemodel).
    cut = tmp_path / "cut.net"
    cut.write_bytes(dc.read_bytes()[:-1])
    assert not deepcompression.matches(str(cut), loaded)
    with pytest.raises(ModelFileError):
        caffe_lite.Net(str(model), caffe_lite.TEST, weights=str(cut))
    # Without the net, load_weights cannot know the layout.
    with pytest.raises(ModelFileError):
        load_weights(str(dc))
    with pytest.raises(ModelFileError, match="not a Deep Compression file"):
        deepcompression.load_weights(str(cut), loaded)


def test_empty_and_tiny_weights_round_trip():
    net = caffe_lite.Net(SMALL, caffe_lite.TEST)
    net.params["conv"][0].data[...] = 0               # a fully pruned layer
    w = net.params["ip"][0].data
    w[...] = 0
    w[3, 7] = -2.5                                     # one weight left
    data, stats = F.encode_net(net)
    sizes = {s.layer: (s.kind, s.entries, s.nbytes) for s in stats if s.index == 0}
    assert sizes["conv"] == (F.SPARSE, 0, 10)        # kind, entries, bytes: an empty stream
    assert sizes["ip"][0] != F.DENSE and sizes["ip"][2] < 60     # of 5,121 dense
    skeleton, arrays = F.decode_arrays(data)
    back = {lp.name: v for lp, v in zip(skeleton.layer, arrays)}
    np.testing.assert_array_equal(back["conv"][0], 0)
    np.testing.assert_array_equal(back["ip"][0], w)
