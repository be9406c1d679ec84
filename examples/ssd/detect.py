"""Run an SSD deploy net (MobileNet-SSD by default) on an image and print its detections.

    python examples/ssd/detect.py --weights MobileNetSSD_deploy.caffemodel --image dog.jpg
    python examples/ssd/detect.py            # this structure with random weights, random input

With no --weights the net gets seeded random weights (the structure runs, the detections mean
nothing); with no --image a seeded random input.  Preprocessing is MobileNet-SSD's: resize to
the net's input size, BGR, (pixel - 127.5) * 0.007843."""
import argparse
import pathlib

import numpy as np

import caffe_lite as caffe

HERE = pathlib.Path(__file__).resolve().parent
VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
       "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
       "sheep", "sofa", "train", "tvmonitor"]


def preprocess(path, height, width):
    """An image file as a 1 x 3 x H x W MobileNet-SSD input, and its (height, width)."""
    im = caffe.io.load_image(path) * 255.0                   # H x W x 3, RGB, 0..255
    size = im.shape[:2]
    im = caffe.io.resize_image(im, (height, width))[:, :, ::-1]   # BGR
    return ((im - 127.5) * 0.007843).transpose(2, 0, 1)[None].astype(np.float32), size


def random_weights(net, seed):
    g = np.random.default_rng(seed)
    for name, ps in net.params.items():
        w = ps[0].data
        std = np.sqrt(2.0 / w[0].size) * (3.0 if "conf" in name else 1.0)
        w[...] = g.normal(0.0, std, w.shape)
        if len(ps) > 1:
            ps[1].data[...] = g.normal(0.0, 0.05, ps[1].data.shape)
    return g


def detect(model, weights=None, image=None, seed=1):
    """(detections [D, 7], image size): rows image_id, label, score, xmin, ymin, xmax, ymax
    with the box in image-normalised coordinates."""
    net = caffe.Net(str(model), caffe.TEST, weights=str(weights) if weights else None)
    g = None if weights else random_weights(net, seed)
    _, _, h, w = net.blobs[net.inputs[0]].shape
    if image:
        x, size = preprocess(image, h, w)
    else:
        g = g or np.random.default_rng(seed)
        x, size = g.uniform(-1, 1, (1, 3, h, w)).astype(np.float32), (h, w)
    out = net.forward(**{net.inputs[0]: x})
    return out[net.outputs[0]].reshape(-1, 7), size


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(HERE / "mobilenet_ssd_deploy.prototxt"))
    ap.add_argument("--weights")
    ap.add_argument("--image")
    ap.add_argument("--threshold", type=float, default=0.0, help="print scores above this")
    args = ap.parse_args(argv)
    det, (h, w) = detect(args.model, args.weights, args.image)
    det = det[(det[:, 1] >= 0) & (det[:, 2] > args.threshold)]    # -1: the fork's "none"
    print(f"{len(det)} detection(s)")
    for _, label, score, x0, y0, x1, y1 in det:
        name = VOC[int(label)] if int(label) < len(VOC) else str(int(label))
        print(f"{name:>12} {score:.3f}  x {x0 * w:7.1f} .. {x1 * w:7.1f}  "
              f"y {y0 * h:7.1f} .. {y1 * h:7.1f}")
    return det


if __name__ == "__main__":
    main()
