"""PriorBox and DetectionOutput: the detection layers of the SSD fork (weiliu89/caffe, branch
ssd), which MobileNet-SSD, VGG-SSD and many deployed detectors use.

PriorBox lays the default boxes of one feature map over the image; DetectionOutput decodes the
location predictions against them, runs per-class NMS on the confidences and writes the
detections as a [1, 1, N, 7] blob of rows (image_id, label, score, xmin, ymin, xmax, ymax) in
image-normalised coordinates.  Both are forward-only, as in the fork, and run their CPU code in
a GPU net (like Accuracy).  The fork's training and evaluation layers (AnnotatedData,
MultiBoxLoss, DetectionEvaluate) are not implemented: their parameters parse and building one
gives the usual "unsupported layer type" error."""
import logging

import numpy as np

from . import bbox
from .base import Layer
from .registry import register

_F = np.float32
log = logging.getLogger("caffe_lite")


@register("PriorBox")
class PriorBoxLayer(Layer):
    """Prior (default) boxes for the feature map bottom[0] over the image bottom[1]: at each
    cell centre ((w + offset) * step_w, (h + offset) * step_h), for each min_size, a square of
    side min_size, a square of side sqrt(min_size * max_size) when max_size is given, then one
    box min_size * sqrt(ar) wide and min_size / sqrt(ar) high per aspect ratio ar != 1 (with
    1 / ar too when flip).  Top: [1, 2, H * W * num_priors * 4], the corners divided by the image
    size (clipped to [0, 1] with clip), then the variances of each coordinate."""
    exact_num_bottom = 2
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.prior_box_param
        if not len(p.min_size):
            raise self.error("must provide min_size")
        if any(s <= 0 for s in p.min_size):
            raise self.error(f"min_size must be positive, got {list(p.min_size)}")
        # The fork reads the sizes into ints: 30.5 behaves as 30.
        self.min_sizes = [int(s) for s in p.min_size]
        self.max_sizes = [int(s) for s in p.max_size]
        if self.max_sizes:
            if len(p.max_size) != len(p.min_size):
                raise self.error(f"needs as many max_size as min_size values, got "
                                 f"{list(p.max_size)} and {list(p.min_size)}")
            bad = [(lo, hi) for lo, hi in zip(p.min_size, p.max_size) if hi <= lo]
            if bad:
                raise self.error(f"max_size must be greater than min_size, got max_size "
                                 f"{bad[0][1]:g} for min_size {bad[0][0]:g}")
        ratios = [_F(1)]
        for ar in (_F(a) for a in p.aspect_ratio):
            if any(abs(float(ar) - float(r)) < 1e-6 for r in ratios):
                continue  # duplicates (and 1) are ignored
            ratios.append(ar)
            if p.flip:
                ratios.append(_F(1.0 / float(ar)))
        if any(r <= 0 for r in ratios):
            raise self.error(f"aspect_ratio must be positive, got {list(p.aspect_ratio)}")
        self.aspect_ratios = ratios
        var = list(p.variance)
        if len(var) > 1 and len(var) != 4:
            raise self.error(f"needs 1 or 4 variance values, got {var}")
        if any(v <= 0 for v in var):
            raise self.error(f"variance must be positive, got {var}")
        self.variance = np.array(var or [0.1], _F)

        if p.HasField("img_h") or p.HasField("img_w"):
            if p.HasField("img_size"):
                raise self.error("either img_size or img_h/img_w should be specified; not both")
            if p.img_h <= 0 or p.img_w <= 0:
                raise self.error(f"img_h and img_w should be larger than 0, got img_h "
                                 f"{p.img_h}, img_w {p.img_w}")
            self.img_hw = (p.img_h, p.img_w)
        elif p.HasField("img_size"):
            if p.img_size <= 0:
                raise self.error("img_size should be larger than 0")
            self.img_hw = (p.img_size, p.img_size)
        else:
            self.img_hw = None
        if p.HasField("step_h") or p.HasField("step_w"):
            if p.HasField("step"):
                raise self.error("either step or step_h/step_w should be specified; not both")
            if p.step_h <= 0 or p.step_w <= 0:
                raise self.error(f"step_h and step_w should be larger than 0, got step_h "
                                 f"{p.step_h:g}, step_w {p.step_w:g}")
            self.step_hw = (_F(p.step_h), _F(p.step_w))
        elif p.HasField("step"):
            if p.step <= 0:
                raise self.error("step should be larger than 0")
            self.step_hw = (_F(p.step), _F(p.step))
        else:
            self.step_hw = None
        self.offset = _F(p.offset)
        self.box_dims = self._box_dims()

    @property
    def num_priors(self):
        return len(self.box_dims)

    def _box_dims(self):
        """(width, height) of each prior at one cell, in the fork's order."""
        dims = []
        for i, s in enumerate(self.min_sizes):
            dims.append((_F(s), _F(s)))
            if self.max_sizes:
                side = _F(np.sqrt(float(s * self.max_sizes[i])))
                dims.append((side, side))
            for ar in self.aspect_ratios:
                if abs(float(ar) - 1.0) < 1e-6:
                    continue
                r = np.sqrt(float(ar))
                dims.append((_F(s * r), _F(s / r)))
        return np.array(dims, _F)

    def reshape(self, bottom, top):
        h, w = bottom[0].height, bottom[0].width
        top[0].reshape(1, 2, h * w * self.num_priors * 4)
        if top[0].count == 0:
            raise self.error(f"bottom[0] {bottom[0].shape} gives no prior boxes")

    def forward_cpu(self, bottom, top):
        fh, fw = bottom[0].height, bottom[0].width
        img_h, img_w = self.img_hw or (bottom[1].height, bottom[1].width)
        step_h, step_w = self.step_hw or (_F(img_h) / _F(fh), _F(img_w) / _F(fw))
        cx = ((np.arange(fw, dtype=_F) + self.offset) * step_w).astype(np.float64)
        cy = ((np.arange(fh, dtype=_F) + self.offset) * step_h).astype(np.float64)
        half = self.box_dims.astype(np.float64) / 2.0            # [P, 2]
        boxes = np.empty((fh, fw, self.num_priors, 4), np.float64)
        boxes[..., 0] = (cx[None, :, None] - half[None, None, :, 0]) / img_w
        boxes[..., 1] = (cy[:, None, None] - half[None, None, :, 1]) / img_h
        boxes[..., 2] = (cx[None, :, None] + half[None, None, :, 0]) / img_w
        boxes[..., 3] = (cy[:, None, None] + half[None, None, :, 1]) / img_h
        out = top[0].data.reshape(2, -1, 4)
        out[0] = boxes.reshape(-1, 4)
        if self.layer_param.prior_box_param.clip:
            np.clip(out[0], 0, 1, out=out[0])
        out[1] = self.variance  # one value for all four coordinates, or one per coordinate

    def backward_cpu(self, top, propagate_down, bottom):
        # The priors depend on the bottoms' shapes only: their gradient is zero.
        for down, b in zip(propagate_down, bottom):
            if down:
                b.diff[...] = 0


@register("DetectionOutput")
class DetectionOutputLayer(Layer):
    """SSD detections from bottom[0] (location predictions, [N, P * L * 4], L = 1 with
    share_location else num_classes), bottom[1] (class confidences, [N, P * num_classes], after
    softmax) and bottom[2] (PriorBox output, [1, 2, P * 4]).

    Per image and per class other than background_label_id: the boxes decoded with code_type,
    the scores above confidence_threshold, the best nms_param.top_k of them, NMS with
    nms_param.nms_threshold (and eta); then the keep_top_k best detections of the image over
    all classes.  Top: [1, 1, D, 7] rows (image_id, label, score, xmin, ymin, xmax, ymax),
    images in order, classes ascending, scores descending within a class.  With no detection
    at all the fork's placeholder: one row per image, (image_id, -1, -1, -1, -1, -1, -1)."""
    exact_num_bottom = 3
    exact_num_top = 1

    def layer_setup(self, bottom, top):
        p = self.layer_param.detection_output_param
        if not p.HasField("num_classes"):
            raise self.error("must specify num_classes")
        self.num_classes = p.num_classes
        self.share_location = p.share_location
        self.num_loc_classes = 1 if p.share_location else p.num_classes
        self.background = p.background_label_id
        if p.code_type not in bbox.CODE_TYPES:
            raise self.error(f"unknown code_type {p.code_type}")
        self.code_type = p.code_type
        self.variance_encoded_in_target = p.variance_encoded_in_target
        self.keep_top_k = p.keep_top_k
        self.confidence_threshold = (p.confidence_threshold if p.HasField("confidence_threshold")
                                     else -np.finfo(_F).max)
        nms = p.nms_param
        if nms.nms_threshold < 0:
            raise self.error(f"nms_threshold must be non negative, got {nms.nms_threshold:g}")
        if not 0 < nms.eta <= 1:
            raise self.error(f"nms_param.eta must be in (0, 1], got {nms.eta:g}")
        self.nms_threshold, self.eta = nms.nms_threshold, nms.eta
        self.top_k = nms.top_k if nms.HasField("top_k") else -1
        # Writing VOC / COCO result files and drawing on screen are the fork's evaluation and
        # demo tools; the detections themselves are the same without them.
        if p.save_output_param.output_directory:
            log.warning("layer '%s': save_output_param is ignored (caffe-lite writes no "
                        "result files; read the detections from the top blob)", self.name)
        if p.visualize:
            log.warning("layer '%s': visualize is ignored", self.name)

    def reshape(self, bottom, top):
        loc, conf, prior = bottom
        if loc.num != conf.num:
            raise self.error(f"location and confidence predictions have different batch sizes: "
                             f"{loc.shape} and {conf.shape}")
        if prior.height % 4:
            raise self.error(f"bottom[2] {prior.shape} is not a PriorBox output [1, 2, P * 4]")
        self.num_priors = prior.height // 4
        if prior.count < 2 * prior.height:
            raise self.error(f"bottom[2] {prior.shape} lacks the prior variances: a PriorBox "
                             f"output is [1, 2, P * 4]")
        want = self.num_priors * self.num_loc_classes * 4
        if loc.count_range(1) != want:
            raise self.error(f"number of priors must match number of location predictions: "
                             f"{self.num_priors} priors x {self.num_loc_classes} location "
                             f"class(es) x 4 = {want}, but bottom[0] is {loc.shape}")
        want = self.num_priors * self.num_classes
        if conf.count_range(1) != want:
            raise self.error(f"number of priors must match number of confidence predictions: "
                             f"{self.num_priors} priors x {self.num_classes} classes = {want}, "
                             f"but bottom[1] is {conf.shape}")
        # The number of detections is known after forward only; the fork also says 1 here.
        top[0].reshape(1, 1, 1, 7)

    def detect(self, loc, conf, prior):
        """Per image, {label: kept prior indices}, and the decoded boxes [N, L, P, 4]."""
        num, p = loc.shape[0], self.num_priors
        priors = prior.reshape(-1)[:2 * p * 4].reshape(2, p, 4)
        if self.code_type != bbox.CORNER:
            bad = np.flatnonzero((priors[0, :, 2] <= priors[0, :, 0]) |
                                 (priors[0, :, 3] <= priors[0, :, 1]))
            if bad.size:
                raise self.error(f"prior {bad[0]} {priors[0, bad[0]].tolist()} has no positive "
                                 f"width and height, which {bbox.CODE_TYPES[self.code_type]} "
                                 f"decoding needs")
        loc = loc.reshape(num, p, self.num_loc_classes, 4).transpose(0, 2, 1, 3)
        boxes = bbox.decode(priors[0], priors[1], loc, self.code_type,
                            self.variance_encoded_in_target)
        sizes = bbox.box_size(boxes)
        conf = conf.reshape(num, p, self.num_classes)
        kept = []
        for i in range(num):
            per_class = {}
            for c in range(self.num_classes):
                if c == self.background:
                    continue
                # (The fork skips decoding the shared boxes when background_label_id is -1 and
                # then aborts; here the shared boxes serve every class.)
                j = 0 if self.share_location else c
                per_class[c] = bbox.nms(boxes[i, j], conf[i, :, c], self.confidence_threshold,
                                        self.nms_threshold, self.eta, self.top_k, sizes[i, j])
            kept.append(self._keep_top_k(per_class, conf[i]))
        return kept, boxes

    def _keep_top_k(self, per_class, scores):
        total = sum(len(v) for v in per_class.values())
        if self.keep_top_k <= -1 or total <= self.keep_top_k:
            return per_class
        dets = [(c, j) for c in sorted(per_class) for j in per_class[c]]
        s = np.array([scores[j, c] for c, j in dets], _F)
        # The fork sorts with std::sort (ties in no defined order); a stable sort here.
        best = np.argsort(-s, kind="stable")[:self.keep_top_k]
        out = {}
        for k in best:
            c, j = dets[k]
            out.setdefault(c, []).append(j)
        return out

    def forward_cpu(self, bottom, top):
        loc, conf, prior = (b.cpu_data for b in bottom)
        kept, boxes = self.detect(loc, conf, prior)
        num = loc.shape[0]
        conf = conf.reshape(num, self.num_priors, self.num_classes)
        rows = []
        for i, per_class in enumerate(kept):
            for c in sorted(per_class):
                idx = np.asarray(per_class[c], np.int64)
                if not idx.size:
                    continue
                b = boxes[i, 0 if self.share_location else c, idx]
                r = np.empty((idx.size, 7), _F)
                r[:, 0], r[:, 1], r[:, 2], r[:, 3:] = i, c, conf[i, idx, c], b
                rows.append(r)
        if rows:
            det = np.concatenate(rows)
        else:
            det = np.full((num, 7), -1, _F)
            det[:, 0] = np.arange(num)
        top[0].reshape(1, 1, det.shape[0], 7)
        top[0].data[...] = det.reshape(top[0].shape)

    def allow_force_backward(self, bottom_index):
        return False
