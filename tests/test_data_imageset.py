"""convert-imageset, compute-mean and the ImageData layer, on small synthetic images."""
import numpy as np
import pytest
from PIL import Image

import caffe_lite as caffe
from caffe_lite.blob import Blob
from caffe_lite.cli import main as cli
from caffe_lite.data.transformer import load_mean_file
from caffe_lite.errors import DataError
from caffe_lite.io.datum import decode_datum, parse_datum
from caffe_lite.proto import caffe_pb2
from caffe_lite.testing import layer_from_text

from data_util import restore_logging  # noqa: F401  (autouse fixture)
from data_util import data_layer_text, read_lmdb


def bilinear_cv(img, nh, nw):
    """cv::resize(INTER_LINEAR) on uint8, one output pixel at a time, written from OpenCV's
    scalar fixed-point rule: 11-bit weights, columns then rows, rounded half up."""
    h, w, k = img.shape
    out = np.zeros((nh, nw, k), np.uint8)

    def coord(d, n_in, n_out):
        s = np.float32((d + 0.5) * (1.0 / (n_out / n_in)) - 0.5)
        i = int(np.floor(s))
        return i, np.float32(s - np.float32(i))

    def wts(f):
        return (int(np.rint((np.float32(1) - f) * np.float32(2048))),
                int(np.rint(f * np.float32(2048))))
    for y in range(nh):
        sy, fy = coord(y, h, nh)
        b0, b1 = wts(fy)
        r0, r1 = min(max(sy, 0), h - 1), min(max(sy + 1, 0), h - 1)
        for x in range(nw):
            sx, fx = coord(x, w, nw)
            if sx < 0 or sx >= w - 1:
                sx, fx = min(max(sx, 0), w - 1), np.float32(0)
            a0, a1 = wts(fx)
            c1 = min(sx + 1, w - 1)
            for ch in range(k):
                s0 = int(img[r0, sx, ch]) * a0 + int(img[r0, c1, ch]) * a1
                s1 = int(img[r1, sx, ch]) * a0 + int(img[r1, c1, ch]) * a1
                out[y, x, ch] = min(255, (s0 * b0 + s1 * b1 + (1 << 21)) >> 22)
    return out


@pytest.fixture
def imageset(tmp_path):
    """Four PNGs (RGB, varying sizes, one gray) and a JPEG, with a list file."""
    rng = np.random.default_rng(0)
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    rgb = {}
    entries = []
    for i, (h, w) in enumerate([(6, 8), (9, 7), (6, 8), (12, 10)]):
        name = f"sub/img {i}.png" if i == 1 else f"img{i}.png"  # a name with a space
        a = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
        Image.fromarray(a).save(root / name)
        rgb[name] = a
        entries.append((name, i + 3))
    g = rng.integers(0, 256, (5, 5)).astype(np.uint8)
    Image.fromarray(g, "L").save(root / "gray.png")
    rgb["gray.png"] = np.repeat(g[:, :, None], 3, axis=2)
    entries.append(("gray.png", 0))
    j = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8)
    Image.fromarray(j).save(root / "photo.jpg", quality=90)
    entries.append(("photo.jpg", 1))
    listfile = tmp_path / "list.txt"
    listfile.write_text("".join(f"{n} {lab}\n" for n, lab in entries) + "\n")
    return root, listfile, entries, rgb


def decoded(path):
    return [(k, parse_datum(v)) for k, v in read_lmdb(path)]


def test_convert_imageset_raw_resized(imageset, tmp_path, capsys):
    root, listfile, entries, rgb = imageset
    out = tmp_path / "db"
    assert cli(["convert-imageset", "-resize_height", "4", "--resize_width=5", f"{root}/",
                str(listfile), str(out)]) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    recs = decoded(out)
    assert [k for k, _ in recs] == [f"{i:08d}_{n}".encode() for i, (n, _) in enumerate(entries)]
    for (name, label), (_, d) in zip(entries, recs):
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 4, 5, label, False)
        if name.endswith(".png"):
            want = bilinear_cv(rgb[name][:, :, ::-1], 4, 5)  # BGR
            np.testing.assert_array_equal(decode_datum(d), want.transpose(2, 0, 1))


def test_convert_imageset_gray_unresized_root_without_slash(imageset, tmp_path):
    root, listfile, entries, rgb = imageset
    out = tmp_path / "gray_db"
    assert cli(["convert-imageset", "-gray", str(root), str(listfile), str(out)]) == 0
    recs = decoded(out)
    d = recs[0][1]
    assert (d.channels, d.height, d.width) == (1, 6, 8)
    want = np.asarray(Image.fromarray(rgb["img0.png"]).convert("L"))
    np.testing.assert_array_equal(decode_datum(d)[0], want)


def test_convert_imageset_encoded(imageset, tmp_path):
    root, listfile, entries, rgb = imageset
    out = tmp_path / "enc_db"
    assert cli(["convert-imageset", "-encoded", f"{root}/", str(listfile), str(out)]) == 0
    recs = dict(decoded(out))
    d = recs[b"00000005_photo.jpg"]
    assert d.encoded and not d.HasField("channels")
    assert d.data == (root / "photo.jpg").read_bytes()  # the file itself, as Caffe stores it
    # -encode_type png: the JPEG is re-encoded losslessly from its decoded pixels
    out2 = tmp_path / "png_db"
    assert cli(["convert-imageset", "-encoded", "-encode_type", "png", f"{root}/",
                str(listfile), str(out2)]) == 0
    d2 = dict(decoded(out2))[b"00000005_photo.jpg"]
    assert d2.data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode_datum(d2), decode_datum(d))
    # the PNG sources were stored as they are
    assert dict(decoded(out2))[b"00000000_img0.png"].data == (root / "img0.png").read_bytes()


def test_convert_imageset_shuffle_is_seeded(imageset, tmp_path):
    root, listfile, entries, _ = imageset
    keys = []
    for i in range(3):
        out = tmp_path / f"s{i}"
        seed = "11" if i < 2 else "12"
        assert cli(["convert-imageset", "-shuffle", "-seed", seed, f"{root}/", str(listfile),
                    str(out)]) == 0
        keys.append([k for k, _ in read_lmdb(out)])
    names = {k.split(b"_", 1)[1].decode() for k in keys[0]}
    assert names == {n for n, _ in entries}
    assert keys[0] == keys[1]


def test_convert_imageset_bad_inputs(imageset, tmp_path, capsys):
    root, listfile, entries, _ = imageset
    bad_label = tmp_path / "bad_label.txt"
    bad_label.write_text("img0.png 3\nimg2.png three\n")
    assert cli(["convert-imageset", f"{root}/", str(bad_label), str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err
    assert f"{bad_label}:2" in err and "'three'" in err and "not an integer" in err
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    bad_img = tmp_path / "bad_img.txt"
    bad_img.write_text("img0.png 3\nbroken.png 1\nimg2.png 2\n")
    assert cli(["convert-imageset", f"{root}/", str(bad_img), str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "cannot decode" in err
    assert not (tmp_path / "o2").exists()
    # Caffe's behaviour on request: log and skip
    assert cli(["convert-imageset", "-skip_bad_images", f"{root}/", str(bad_img),
                str(tmp_path / "o3")]) == 0
    assert "1 unreadable images skipped" in capsys.readouterr().out
    assert [k for k, _ in read_lmdb(tmp_path / "o3")] == [b"00000000_img0.png",
                                                          b"00000002_img2.png"]
    missing = tmp_path / "missing.txt"
    missing.write_text("nope.png 1\n")
    assert cli(["convert-imageset", f"{root}/", str(missing), str(tmp_path / "o4")]) == 1
    assert "nope.png: no such image file" in capsys.readouterr().err
    assert cli(["convert-imageset", "-check_size", f"{root}/", str(listfile),
                str(tmp_path / "o5")]) == 1
    assert "-check_size" in capsys.readouterr().err
    assert cli(["convert-imageset", "-backend", "leveldb", f"{root}/", str(listfile),
                str(tmp_path / "o6")]) == 1
    assert "lmdb" in capsys.readouterr().err


def test_compute_mean(imageset, tmp_path, capsys):
    root, listfile, entries, rgb = imageset
    db = tmp_path / "db"
    assert cli(["convert-imageset", "-resize_height", "4", "-resize_width", "5", f"{root}/",
                str(listfile), str(db)]) == 0
    arrays = [decode_datum(d).astype(np.float64) for _, d in decoded(db)]
    mean_path = tmp_path / "mean.binaryproto"
    assert cli(["compute-mean", str(db), str(mean_path)]) == 0
    out = capsys.readouterr().out
    want = np.mean(arrays, axis=0)
    proto = caffe_pb2.BlobProto.FromString(mean_path.read_bytes())
    assert (proto.num, proto.channels, proto.height, proto.width) == (1, 3, 4, 5)
    assert not proto.HasField("shape")  # legacy 4-D, as compute_image_mean writes
    np.testing.assert_allclose(load_mean_file(mean_path), want, rtol=1e-6)
    assert "mean_value: " in out and f"{want[0].mean():.6g}" in out
    assert cli(["compute-mean", str(db), str(mean_path)]) == 1  # never overwritten
    assert cli(["compute-mean", str(db)]) == 0  # no output file: just prints
    # variable-size records: a clear error
    raw = tmp_path / "raw"
    assert cli(["convert-imageset", f"{root}/", str(listfile), str(raw)]) == 0
    capsys.readouterr()
    assert cli(["compute-mean", str(raw), str(tmp_path / "m2")]) == 1
    assert "key '00000001_sub/img 1.png'" in capsys.readouterr().err


def test_data_layer_with_computed_mean_file(imageset, tmp_path):
    root, listfile, entries, _ = imageset
    db = tmp_path / "db"
    assert cli(["convert-imageset", "-resize_height", "6", "-resize_width", "6",
                "-encoded", "-encode_type", "png", f"{root}/", str(listfile), str(db)]) == 0
    mean_path = tmp_path / "mean.binaryproto"
    assert cli(["compute-mean", str(db), str(mean_path)]) == 0
    mean = load_mean_file(mean_path)
    pix = np.stack([decode_datum(d) for _, d in decoded(db)]).astype(np.float32)
    layer = layer_from_text(data_layer_text(db, 6, f'mean_file: "{mean_path}" crop_size: 4'),
                            caffe_pb2.TEST)
    top = [Blob(), Blob()]
    layer.setup([], top)
    layer.forward([], top)
    want = (pix - mean)[:, :, 1:5, 1:5]
    np.testing.assert_allclose(top[0].data, want, rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(top[1].data, [lab for _, lab in entries])
    layer.close()


# --- ImageData --------------------------------------------------------------------------------

def image_data_text(listfile, root, batch=3, extra="", transform=""):
    return (f'name: "img" type: "ImageData" top: "data" top: "label" '
            f'transform_param {{ {transform} }} '
            f'image_data_param {{ source: "{listfile}" root_folder: "{root}/" '
            f'batch_size: {batch} {extra} }}')


def test_image_data_layer_resize_and_wrap(imageset):
    root, listfile, entries, rgb = imageset
    layer = layer_from_text(image_data_text(listfile, root, 4, "new_height: 5 new_width: 6",
                                            "scale: 0.5"))
    top = [Blob(), Blob()]
    layer.setup([], top)
    assert top[0].shape == (4, 3, 5, 6) and top[1].shape == (4,)
    layer.forward([], top)
    layer.forward([], top)  # items 4, 5, then wraps to 0, 1
    order = [4, 5, 0, 1]
    np.testing.assert_array_equal(top[1].data, [entries[i][1] for i in order])
    for j, i in enumerate(order):
        name = entries[i][0]
        if name.endswith(".png"):
            want = bilinear_cv(rgb[name][:, :, ::-1], 5, 6)
            np.testing.assert_array_equal(top[0].data[j], want.transpose(2, 0, 1) * 0.5)
    layer.close()


def test_image_data_gray_shuffle_seeded(imageset):
    root, listfile, entries, rgb = imageset
    text = image_data_text(listfile, root, 6, "new_height: 4 new_width: 4 is_color: false "
                                              "shuffle: true")
    labels = []
    for seed in (3, 3):
        caffe.set_random_seed(seed)
        layer = layer_from_text(text)
        top = [Blob(), Blob()]
        layer.setup([], top)
        assert top[0].shape == (6, 1, 4, 4)
        layer.forward([], top)
        labels.append(top[1].data.copy())
        layer.close()
    np.testing.assert_array_equal(labels[0], labels[1])
    assert sorted(labels[0]) == sorted(lab for _, lab in entries)


def test_image_data_errors(imageset, tmp_path):
    root, listfile, entries, _ = imageset
    with pytest.raises(DataError, match="new_height and new_width must be set together"):
        layer_from_text(image_data_text(listfile, root, 2, "new_height: 4")).setup(
            [], [Blob(), Blob()])
    # different sizes without resize or crop: the batch cannot be stacked
    layer = layer_from_text(image_data_text(listfile, root, 2))
    top = [Blob(), Blob()]
    layer.setup([], top)
    with pytest.raises(DataError, match=r"img 1.png has shape 3x9x7 but the batch's first item "
                                        r"has 3x6x8"):
        layer.forward([], top)
    layer.close()
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    lst = tmp_path / "l.txt"
    lst.write_text("img0.png 1\nbroken.jpg 2\n")
    layer = layer_from_text(image_data_text(lst, root, 2, "new_height: 4 new_width: 4"))
    layer.setup([], top)
    with pytest.raises(DataError, match=r"broken.jpg: cannot decode the image"):
        layer.forward([], top)
    layer.close()
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DataError, match=r"layer 'img' \(ImageData\): list file .* is empty"):
        layer_from_text(image_data_text(empty, root)).setup([], top)
