"""Masks are how caffe-lite prunes: a blob's mask only ever shrinks (new = old AND keep), then
data *= mask, so a weight that is 0 is never revived and stays 0 through fine-tuning."""
import numpy as np


def shrink_mask(blob, keep):
    """mask = mask AND keep, then data *= mask.  Gives the blob a mask if it had none (a bias
    or BatchNorm entry of a removed channel then stays 0 while fine-tuning).  Returns how many
    entries became zero."""
    keep = np.asarray(keep, dtype=bool).reshape(blob.shape)
    before = int(np.count_nonzero(blob.cpu_data))
    if not blob.has_mask:
        blob.init_mask()
    blob.mask = (blob.cpu_mask != 0) & keep
    blob.apply_mask()
    return before - int(np.count_nonzero(blob.cpu_data))


def snapshot_params(net):
    """Copies of every parameter blob's data and mask (to undo trial pruning)."""
    saved = []
    for layer in net.layers:
        for b in layer.blobs:
            saved.append((b, b.cpu_data.copy(), None if not b.has_mask else b.cpu_mask.copy()))
    return saved


def restore_params(saved):
    for b, data, mask in saved:
        b.data[...] = data
        if mask is None:
            b.mask = None
        else:
            b.mask = mask
