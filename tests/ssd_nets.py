"""SSD test nets: random He-scaled weights and a small two-head SSD with every layer of the
SSD fork (PriorBox, Normalize, Permute, Flatten, Concat, Reshape, Softmax, DetectionOutput)."""
import numpy as np


def random_weights(net, seed, conf_gain=1.0):
    """He-scaled Gaussian weights, small biases; the confidence heads' weights times
    conf_gain (a wider spread of class scores gives detections above the threshold)."""
    g = np.random.default_rng(seed)
    for name, ps in net.params.items():
        w = ps[0].data
        std = np.sqrt(2.0 / max(w[0].size, 1)) if w.ndim > 1 else 0.5
        if "conf" in name:
            std *= conf_gain
        w[...] = g.normal(1.0 if w.ndim <= 1 else 0.0, std, w.shape)
        if len(ps) > 1:
            ps[1].data[...] = g.normal(0, 0.05, ps[1].data.shape)
    return g


def small_ssd(prior_a, prior_b, det, norm="across_spatial: false channel_shared: false",
              classes=4):
    """Two heads over a 24 x 40 input: conv1 (12 x 20) through Normalize, conv2 (6 x 10)."""
    def head(name, n):
        return "".join(f"""
layer {{ name: "{name}_{k}" type: "Convolution" bottom: "{name}" top: "{name}_{k}"
        convolution_param {{ num_output: {n * m} kernel_size: 3 pad: 1 }} }}
layer {{ name: "{name}_{k}_perm" type: "Permute" bottom: "{name}_{k}" top: "{name}_{k}_perm"
        permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}
layer {{ name: "{name}_{k}_flat" type: "Flatten" bottom: "{name}_{k}_perm"
        top: "{name}_{k}_flat" flatten_param {{ axis: 1 }} }}""" for k, m in (
            ("loc", 4 * det.get("loc_classes", 1)), ("conf", classes)))
    pa, pb = prior_a, prior_b
    return f"""name: "small_ssd"
input: "data" input_shape {{ dim: 2 dim: 3 dim: 24 dim: 40 }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"
        norm_param {{ {norm} scale_filler {{ type: "constant" value: 20 }} }} }}
layer {{ name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param {{ num_output: 8 kernel_size: 3 stride: 2 pad: 1 }} }}
{head("norm1", pa["n"])}
{head("conv2", pb["n"])}
layer {{ name: "norm1_prior" type: "PriorBox" bottom: "norm1" bottom: "data" top: "norm1_prior"
        prior_box_param {{ {pa["text"]} }} }}
layer {{ name: "conv2_prior" type: "PriorBox" bottom: "conv2" bottom: "data" top: "conv2_prior"
        prior_box_param {{ {pb["text"]} }} }}
layer {{ name: "mbox_loc" type: "Concat" bottom: "norm1_loc_flat" bottom: "conv2_loc_flat"
        top: "mbox_loc" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_conf" type: "Concat" bottom: "norm1_conf_flat" bottom: "conv2_conf_flat"
        top: "mbox_conf" concat_param {{ axis: 1 }} }}
layer {{ name: "mbox_prior" type: "Concat" bottom: "norm1_prior" bottom: "conv2_prior"
        top: "mbox_prior" concat_param {{ axis: 2 }} }}
layer {{ name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape"
        reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}
layer {{ name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
        softmax_param {{ axis: 2 }} }}
layer {{ name: "conf_flat" type: "Flatten" bottom: "conf_softmax" top: "conf_flat" }}
layer {{ name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
        bottom: "conf_flat" bottom: "mbox_prior" top: "detection_out"
        detection_output_param {{ num_classes: {classes} {det["text"]} }} }}
"""


PRIOR_A = dict(n=6, text="min_size: 4 min_size: 8 max_size: 7 max_size: 12 aspect_ratio: 2 "
                         "flip: false clip: true variance: 0.1 variance: 0.1 variance: 0.2 "
                         "variance: 0.2")
PRIOR_B = dict(n=6, text="min_size: 10 max_size: 20 aspect_ratio: 2 aspect_ratio: 0.5 "
                         "aspect_ratio: 3 flip: true clip: false step_h: 5 step_w: 4.5 "
                         "offset: 0.25 variance: 0.15")
# OpenCV wants share_location and background_label_id written out.  It reads no variances
# with variance_encoded_in_target and ignores img_h / img_w; those are checked by hand only.
DET = "nms_param { nms_threshold: 0.45 top_k: 60 } keep_top_k: 80 confidence_threshold: 0.3"
CASES = {
    "center_size": dict(text=f"{DET} share_location: true background_label_id: 0 "
                             "code_type: CENTER_SIZE"),
    "corner": dict(text=f"{DET} share_location: true background_label_id: 0 code_type: CORNER"),
    "per_class_boxes": dict(text=f"{DET} share_location: false background_label_id: 0 "
                                 "code_type: CENTER_SIZE", loc_classes=4),
    "background_2": dict(text=f"{DET} share_location: true background_label_id: 2 "
                              "code_type: CENTER_SIZE"),
    "all_nms_kept": dict(text="nms_param { nms_threshold: 0.45 top_k: 60 } keep_top_k: 400 "
                              "confidence_threshold: 0.3 share_location: true "
                              "background_label_id: 0 code_type: CENTER_SIZE"),
    "few_kept": dict(text="nms_param { nms_threshold: 0.3 top_k: 10 } keep_top_k: 7 "
                          "confidence_threshold: 0.5 code_type: CENTER_SIZE share_location: true "
                          "background_label_id: 0"),
}
