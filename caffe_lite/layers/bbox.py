"""Box arithmetic of the SSD fork's DetectionOutput (its util/bbox_util): decoding location
predictions against prior boxes, Jaccard overlap, and greedy non-maximum suppression with the
fork's adaptive threshold.

Boxes are float32 arrays [..., 4] of (xmin, ymin, xmax, ymax) in image-normalised coordinates,
and every step is float32 in the fork's order of operations, so that the kept boxes and their
coordinates are the fork's."""
import numpy as np

from ..proto import caffe_pb2

_F = np.float32
CORNER = caffe_pb2.PriorBoxParameter.CORNER
CENTER_SIZE = caffe_pb2.PriorBoxParameter.CENTER_SIZE
CORNER_SIZE = caffe_pb2.PriorBoxParameter.CORNER_SIZE
CODE_TYPES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}


def box_size(boxes):
    """Area of each box; 0 for an inverted box (xmax < xmin or ymax < ymin), as the fork's
    BBoxSize for normalised boxes."""
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), _F(0), w * h).astype(_F)


def decode(prior, variance, loc, code_type, variance_encoded_in_target):
    """Decode location predictions `loc` [..., P, 4] against `prior` and `variance` [P, 4].

    CORNER adds the (variance-scaled) offsets to the prior's corners; CORNER_SIZE scales them by
    the prior's width / height first; CENTER_SIZE moves the prior's centre by offset * size and
    scales its size by exp(offset).  With variance_encoded_in_target the variances are taken to
    be 1 (the network predicts the scaled offsets itself)."""
    prior = prior.astype(_F, copy=False)
    loc = loc.astype(_F, copy=False)
    v = np.ones_like(prior) if variance_encoded_in_target else variance.astype(_F, copy=False)
    off = v * loc
    if code_type == CORNER:
        return (prior + off).astype(_F)
    pw = prior[:, 2] - prior[:, 0]
    ph = prior[:, 3] - prior[:, 1]
    if code_type == CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=-1)
        return (prior + off * size).astype(_F)
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    pcx = (prior[:, 0] + prior[:, 2]) / _F(2)
    pcy = (prior[:, 1] + prior[:, 3]) / _F(2)
    cx = off[..., 0] * pw + pcx
    cy = off[..., 1] * ph + pcy
    with np.errstate(over="ignore"):
        w = np.exp(off[..., 2]) * pw
        h = np.exp(off[..., 3]) * ph
    half_w, half_h = w / _F(2), h / _F(2)
    return np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=-1).astype(_F)


def overlap(a, size_a, b, size_b):
    """Jaccard overlap (intersection over union) of boxes `a` and `b` (broadcast against each
    other), the fork's JaccardOverlap for normalised boxes: 0 when they do not intersect with
    positive area.  Symmetric in a and b, bit for bit."""
    disjoint = ((b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) |
                (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1]))
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = iw * ih
    hit = ~disjoint & (iw > 0) & (ih > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        iou = inter / ((size_a + size_b) - inter)
    return np.where(hit, iou, _F(0))


def max_score_index(scores, threshold, top_k):
    """Indices of the scores above `threshold`, highest first (ties by index, as the fork's
    stable sort), at most top_k of them when top_k > -1."""
    idx = np.flatnonzero(scores > _F(threshold))
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx[:top_k] if top_k > -1 else idx


# Up to this many candidates NMS works on their pairwise overlaps (a k x k float32 matrix);
# beyond it, on the overlaps with the boxes kept so far.  Both give the same boxes.
MATRIX_LIMIT = 2048


def nms(boxes, scores, score_threshold, nms_threshold, eta=1.0, top_k=-1, sizes=None):
    """The fork's ApplyNMSFast: visit the candidates (max_score_index) best first and keep one
    when its overlap with every box kept so far is <= the threshold.  With eta < 1 the
    threshold shrinks by eta after each kept box, as long as it is above 0.5 (adaptive NMS).
    Returns the kept indices in the order kept (descending score)."""
    if sizes is None:
        sizes = box_size(boxes)
    order = max_score_index(scores, score_threshold, top_k)
    b, s = boxes[order], sizes[order]
    thr, eta = _F(nms_threshold), _F(eta)
    kept = []
    if len(order) <= MATRIX_LIMIT and eta >= 1:
        # A fixed threshold: each kept box strikes out the later candidates it overlaps.
        alive = np.ones(len(order), bool)
        ious = overlap(b[:, None], s[:, None], b[None], s[None])
        for i in range(len(order)):
            if alive[i]:
                kept.append(i)
                alive &= ious[i] <= thr
        return order[kept].tolist()
    ious = overlap(b[:, None], s[:, None], b[None], s[None]) if len(order) <= MATRIX_LIMIT \
        else None
    for i in range(len(order)):
        if kept:
            ov = ious[i, kept] if ious is not None else overlap(b[i], s[i], b[kept], s[kept])
            if not np.all(ov <= thr):
                continue
        kept.append(i)
        if eta < 1 and thr > 0.5:
            thr = _F(thr * eta)
    return order[kept].tolist()
