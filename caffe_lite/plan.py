"""What a Net runs in a forward or backward pass, worked out once instead of on every call.

Caffe's Net::ForwardFromTo calls every layer's Reshape before its Forward; in Python that
shape logic (and the checks in it) costs more than the arithmetic of a small layer.  A Plan
holds, per configuration (device mode, compiled kernels on or off, fusion on or off):

  * the steps of a pass: each layer's bound forward_cpu / forward_gpu (or backward), its
    bottom and top vectors, whether it carries a loss; consecutive layers that run as one
    step (layers/fusion.py) as one entry;
  * the shape epoch (blob.shape_epoch) at which every layer was last shaped.  A pass whose
    blobs all still have those shapes and buffers skips the layers' reshape; as soon as any
    blob's shape or memory changes (an input of another size, a layer whose output size
    depends on its data, a blob shared anew) the layers from there on reshape, as Caffe's do.
    Layers whose reshape does more than shape tops from bottoms (data layers, Python layers)
    say so with `reshape_each_forward = True` and reshape on every pass.

Validation therefore happens when shapes change, not per call, and buffers sized by reshape
are reused.  On the CPU the pass runs inside parallel.cpu_pass: the thread count is read and
BLAS held at one thread once per pass, not around each matrix product.  Net hooks (pycaffe's
before_forward & co.) take the layer-by-layer path instead (net.py), as before."""
from . import blob as _blob
from .backend import state as _mode
from .layers import fusion, jit, parallel


def current_key():
    """The configuration a plan is valid for."""
    return (_mode.mode(), jit.enabled(), fusion.enabled())


class Plan:
    # (start, end) ranges whose steps are kept (the full range, plus a few partial ones)
    MAX_RANGES = 8

    def __init__(self, net, key):
        self.net = net
        self.key = key
        gpu = key[0] == _mode.GPU
        groups = [g for g in fusion.plan(net).values() if g.active()]
        self.by_first = {g.first: g for g in groups}
        self.by_last = {g.last: g for g in groups if g.backward_ok}
        self.run_name = "forward_gpu" if gpu else "forward_cpu"
        self.cpu = not gpu
        self._forward_steps = {}
        self._backward_steps = {}
        self.shaped_at = None   # shape epoch at which every layer was shaped (None: unknown)

    # --- steps --------------------------------------------------------------------------------
    def forward_steps(self, start, end):
        """[(layer index, reshape(bottom, top), run(bottom, top), bottom, top,
        reshape every pass, layer whose loss to add or None)] for layers start..end."""
        key = (start, end)
        steps = self._forward_steps.get(key)
        if steps is not None:
            return steps
        net = self.net
        steps = []
        i = start
        while i <= end:
            g = self.by_first.get(i)
            if g is not None and g.last <= end:
                steps.append((i, g.reshape_layers, g.run_forward, None, None, False, None))
                i = g.last + 1
                continue
            layer = net.layers[i]
            loss = layer if any(layer.loss_weights) else None
            steps.append((i, layer.reshape, getattr(layer, self.run_name), net.bottom_vecs[i],
                          net.top_vecs[i], layer.reshape_each_forward, loss))
            i += 1
        if len(self._forward_steps) >= self.MAX_RANGES:
            self._forward_steps.clear()
        self._forward_steps[key] = steps
        return steps

    def backward_steps(self, start, end):
        """[(layer index, run, top, propagate_down, bottom)] for layers start down to end that
        compute something."""
        key = (start, end)
        steps = self._backward_steps.get(key)
        if steps is not None:
            return steps
        net = self.net
        need = net.layer_need_backward
        steps = []
        i = start
        while i >= end:
            g = self.by_last.get(i)
            if g is not None and g.first >= end:
                steps.append((i, g.run_backward, None, None, None))
                i = g.first - 1
                continue
            if need[i]:
                steps.append((i, net.layers[i].backward, net.top_vecs[i],
                              net.bottom_need_backward[i], net.bottom_vecs[i]))
            i -= 1
        if len(self._backward_steps) >= self.MAX_RANGES:
            self._backward_steps.clear()
        self._backward_steps[key] = steps
        return steps

    # --- passes -------------------------------------------------------------------------------
    def forward(self, start, end):
        """Run layers start..end; returns the summed loss.  On an error, `failed` names the
        layer index."""
        steps = self.forward_steps(start, end)
        epoch = _blob.shape_epoch
        dirty = epoch != self.shaped_at
        changed = False
        loss = 0.0
        self.failed = start
        with parallel.cpu_pass() if self.cpu else _NoPass():
            for step in steps:
                self.failed = step[0]
                if dirty or step[5]:
                    step[1](step[3], step[4])
                step[2](step[3], step[4])
                if step[6] is not None:
                    loss += step[6].loss_value(step[4])
                if _blob.shape_epoch != epoch:
                    epoch = _blob.shape_epoch
                    dirty = changed = True
        if start == 0 and end == len(self.net.layers) - 1:
            self.shaped_at = epoch
        elif changed or dirty:
            self.shaped_at = None
        return loss

    def backward(self, start, end):
        steps = self.backward_steps(start, end)
        self.failed = start
        with parallel.cpu_pass() if self.cpu else _NoPass():
            for step in steps:
                self.failed = step[0]
                step[1](step[2], step[3], step[4])

    def reshaped(self):
        """Every layer was just shaped (Net.reshape)."""
        self.shaped_at = _blob.shape_epoch


class _NoPass:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
