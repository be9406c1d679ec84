"""NetParameter preparation, as Caffe does it before building: state filtering
(phase / level / stage include-exclude rules) and automatic Split insertion."""
from .errors import NetError
from .proto import caffe_pb2


def state_meets_rule(state, rule):
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_net(net, source=""):
    """A copy of `net` keeping only the layers its `state` selects."""
    state = net.state
    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    for layer in net.layer:
        if layer.include and layer.exclude:
            raise NetError(f"{source}: layer '{layer.name}' specifies both include and "
                           "exclude rules; specify one or the other")
        included = not layer.include
        if any(state_meets_rule(state, r) for r in layer.exclude):
            included = False
        if any(state_meets_rule(state, r) for r in layer.include):
            included = True
        if included:
            out.layer.add().CopyFrom(layer)
    return out


def split_layer_name(layer_name, blob_name, blob_idx):
    return f"{blob_name}_{layer_name}_{blob_idx}_split"


def split_blob_name(layer_name, blob_name, blob_idx, split_idx):
    return f"{blob_name}_{layer_name}_{blob_idx}_split_{split_idx}"


def insert_splits(net, source=""):
    """Caffe's InsertSplits: a top read by several bottoms (or read once and also used as a
    loss) gets a Split layer with one output per consumer, named exactly as Caffe names them."""
    last_top = {}                # blob name -> (layer index, top index) of its latest producer
    source_of = {}               # (layer, bottom index) -> (layer, top index)
    consumers = {}               # (layer, top index) -> number of consumers
    loss_weight = {}             # (layer, top index) -> loss weight
    for i, layer in enumerate(net.layer):
        for j, name in enumerate(layer.bottom):
            if name not in last_top:
                known = ", ".join(sorted(last_top)) or "none"
                raise NetError(f"{source}: layer '{layer.name}' (bottom {j}) reads blob "
                               f"'{name}', which no earlier layer produces; "
                               f"blobs produced so far: {known}")
            src = last_top[name]
            source_of[(i, j)] = src
            consumers[src] = consumers.get(src, 0) + 1
        for j, name in enumerate(layer.top):
            last_top[name] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            idx = last_top[layer.top[j]]
            loss_weight[idx] = layer.loss_weight[j]
            if layer.loss_weight[j]:
                consumers[idx] = consumers.get(idx, 0) + 1

    out = caffe_pb2.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    next_split = {}
    for i, layer in enumerate(net.layer):
        lp = out.layer.add()
        lp.CopyFrom(layer)
        for j in range(len(lp.bottom)):
            src = source_of[(i, j)]
            if consumers.get(src, 0) > 1:
                k = next_split.get(src, 0)
                next_split[src] = k + 1
                lp.bottom[j] = split_blob_name(net.layer[src[0]].name, lp.bottom[j], src[1], k)
        for j, name in enumerate(layer.top):
            n = consumers.get((i, j), 0)
            if n <= 1:
                continue
            split = caffe_pb2.LayerParameter(name=split_layer_name(layer.name, name, j),
                                             type="Split", bottom=[name])
            split.top.extend(split_blob_name(layer.name, name, j, k) for k in range(n))
            w = loss_weight.get((i, j), 0.0)
            if w:
                # The loss moves to the split's first output.  Caffe clears the producer's
                # loss_weight, after which a loss layer re-adds its default 1 and the reported
                # loss counts the blob twice (gradients are unaffected); we zero it instead.
                split.loss_weight.extend([w] + [0.0] * (n - 1))
                lp.ClearField("loss_weight")
                lp.loss_weight.extend([0.0] * len(lp.top))
                next_split[(i, j)] = next_split.get((i, j), 0) + 1
            out.layer.add().CopyFrom(split)
    return out
