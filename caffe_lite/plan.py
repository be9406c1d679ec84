"""What a Net runs in a forward or backward pass, worked out once instead of on every call.

Caffe's Net::ForwardFromTo calls every layer's Reshape before its Forward; in Python that
shape logic (and the checks in it) costs more than the arithmetic of a small layer.  A Plan
holds, per configuration (device mode, compiled kernels on or off, fusion on or off):

  * the steps of a pass: each layer's bound forward_cpu / forward_gpu (or backward), its
    bottom and top vectors, whether it carries a loss; consecutive layers that run as one
    step (layers/fusion.py) as one entry;
  * the shape epoch (blob.shape_epoch) the steps were shaped at.  A pass whose blobs all
    still have those shapes and buffers skips the layers' reshape; as soon as any blob's shape
    or memory changes (an input of another size, a layer whose output size depends on its
    data, a blob shared anew) the layers from there on reshape, as Caffe's do.  Layers whose
    reshape does more than shape tops from bottoms (Python layers) say so with
    `reshape_each_forward = True` and reshape on every pass;
  * on the CPU, each step's prepared forward (Layer.prepare_cpu): a callable with the arrays,
    buffers, kernels and thread split of the current shapes bound, made right after the
    reshape and run as long as nothing changes;
  * on the CPU, once a range of layers has run twice in a generation, its *programs*
    (layers/program.py): each run of consecutive steps whose prepared callables can say all
    of their work as the spinning pool's job rows runs as one compiled call, bit for bit what
    the steps compute, without the interpreter between the kernels; a step that cannot (or
    whose `ready` check says not this time: a weight gone sparse, changed parameters) runs
    as it is.  A pass that is all one program (a deploy net of native layers) runs with its
    edges in the same compiled call (Program.run_pass): no cpu_pass opened in Python.

Validation therefore happens when shapes change, not per call, and buffers sized by reshape
are reused.  On the CPU the pass runs inside parallel.cpu_pass: the thread count is read and
BLAS held at one thread once per pass, not around each matrix product.  Net hooks (pycaffe's
before_forward & co.) take the layer-by-layer path instead (net.py), as before."""
from . import blob as _blob
from .backend import state as _mode
from .backend import memory as _memory
from .backend.memory import HEAD_AT_CPU
from .layers import fusion, gemm_pool, parallel
from .layers.program import Program
from .util import env


# The settings a plan is made for (besides the device mode): compiled kernels, fusion, the
# thread count, the spinning pool, the sparse path's default mode (sparse.chooser relies on
# it).  A plan is keyed on their raw values: reading them costs 0.3 us, parsing them 1.5.
_SETTINGS = ("CAFFE_LITE_JIT", "CAFFE_LITE_FUSE", "CAFFE_LITE_NUM_THREADS", "CAFFE_LITE_SPIN",
             "CAFFE_LITE_SPARSE")


_settings = env.raw_reader(_SETTINGS)


def current_key():
    """The configuration a plan is valid for."""
    return _mode.mode(), _settings()


class _Step:
    """One entry of a pass: a layer, or a fused group of consecutive layers."""
    __slots__ = ("index", "reshape", "prepare", "bottom", "top", "always", "loss", "run", "gen")

    def __init__(self, index, reshape, prepare, bottom, top, always, loss):
        self.index = index
        self.reshape, self.prepare = reshape, prepare
        self.bottom, self.top = bottom, top
        self.always, self.loss = always, loss
        self.run = None
        self.gen = -1           # the plan generation the step was shaped and prepared in


class Plan:
    # (start, end) ranges whose step lists are kept (the full range, plus a few partial ones)
    MAX_RANGES = 8

    def __init__(self, net, key):
        self.net = net
        self.key = key
        self.cpu = key[0] != _mode.GPU
        groups = [g for g in fusion.plan(net).values() if g.active()]
        self.by_first = {g.first: g for g in groups}
        self.by_last = {g.last: g for g in groups if g.backward_ok}
        self._layer_steps = {}
        self._group_steps = {}
        self._forward_steps = {}
        self._backward_steps = {}
        self._programs = {}     # (start, end) -> (generation, _programs' units, None or _SEEN)
        self._whole = None      # (start, end, generation, Program) of a pass that is one program
        self.shaped_at = None   # shape epoch when the current generation began
        self.gen = 0            # bumped whenever a blob's shape or memory changed
        self.failed = 0

    # --- steps --------------------------------------------------------------------------------
    def _layer_step(self, i):
        st = self._layer_steps.get(i)
        if st is None:
            net = self.net
            layer, bottom, top = net.layers[i], net.bottom_vecs[i], net.top_vecs[i]
            loss = layer if any(layer.loss_weights) else None
            if self.cpu:
                reshape, prepare = layer.reshape, _prepare_layer(layer, bottom, top)
            else:
                reshape, prepare = _gpu_step(layer, bottom, top)
            st = self._layer_steps[i] = _Step(i, reshape, prepare, bottom, top,
                                              layer.reshape_each_forward, loss)
        return st

    def _group_step(self, g):
        st = self._group_steps.get(g.first)
        if st is None:
            prepare = g.prepare_cpu if self.cpu else (lambda g=g: g.run_forward)
            st = self._group_steps[g.first] = _Step(g.first, g.reshape_layers, prepare, None,
                                                    None, False, None)
        return st

    def forward_steps(self, start, end):
        """The steps of layers start..end."""
        key = (start, end)
        steps = self._forward_steps.get(key)
        if steps is not None:
            return steps
        steps = []
        i = start
        while i <= end:
            g = self.by_first.get(i)
            if g is not None and g.last <= end:
                steps.append(self._group_step(g))
                i = g.last + 1
                continue
            steps.append(self._layer_step(i))
            i += 1
        if len(self._forward_steps) >= self.MAX_RANGES:
            self._forward_steps.clear()
        self._forward_steps[key] = steps
        self._written = None
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

    def _host_heads(self):
        """Prepared CPU steps write the blobs' host arrays directly: make sure every blob's
        host copy is the one that counts (it is, unless its GPU side was asked for since)."""
        mems = self._written
        if mems is None:
            mems = self._written = [b._data.mem for b in self.net._blobs]
        for m in mems:
            if m.head is not HEAD_AT_CPU:
                m.mutable_cpu()

    # --- passes -------------------------------------------------------------------------------
    def forward(self, start, end, defer=()):
        """Run layers start..end; returns the summed loss.  On an error, `failed` is the index
        of the layer (or group) that raised.  With `defer` (layer indices whose loss may be
        read after the backward pass, Net._deferrable_losses), returns instead each step's
        loss in layer order, a net._Pending for those in `defer`."""
        whole = self._whole
        if whole is not None and whole[:3] == (start, end, self.gen) and WHOLE and \
                not defer and _blob.shape_epoch == self.shaped_at and not _memory.on_gpu and \
                whole[3].run_pass():
            return 0.0
        steps = self.forward_steps(start, end)
        parts = [] if defer else None
        epoch = _blob.shape_epoch
        if epoch != self.shaped_at:
            # shapes changed since the last pass: every step is stale
            self.gen += 1
            self._written = None
        gen = self.gen
        dirty = False
        loss = 0.0
        self.failed = start
        if self.cpu:
            self._host_heads()
        with parallel.cpu_pass() if self.cpu else _NoPass():
            first = 0
            if self.cpu and parts is None and PROGRAMS:
                first, dirty, epoch = self._run_programs(start, end, steps, gen, epoch)
            for st in steps[first:]:
                if dirty or st.gen != gen or st.always:
                    self.failed = st.index
                    st.reshape(st.bottom, st.top)
                    with parallel.planned():
                        st.run = st.prepare()
                    st.gen = gen
                try:
                    st.run()
                except BaseException:
                    self.failed = st.index
                    raise
                if parts is not None:
                    if st.loss is None:
                        pass
                    elif st.index in defer:
                        parts.append(_pending(st.index))
                    else:
                        parts.append(st.loss.loss_value(st.top))
                elif st.loss is not None:
                    loss += st.loss.loss_value(st.top)
                if _blob.shape_epoch != epoch:
                    # this step changed a blob's shape or memory: the steps after it reshape
                    # and prepare again
                    epoch = _blob.shape_epoch
                    dirty = True
                    self._written = None
        if dirty:
            self._programs.clear()      # (steps were prepared anew)
        elif self.cpu and parts is None:
            made = self._programs.get((start, end))
            # made on a range's second pass in a generation: passes over ever new ranges or
            # shapes do not pay for programs they never run
            if made is None or made[0] != gen:
                if len(self._programs) >= self.MAX_RANGES:
                    self._programs.clear()
                self._programs[(start, end)] = (gen, _SEEN)
            elif made[1] is _SEEN:
                units = _programs(steps)
                self._programs[(start, end)] = (gen, units)
                if units is not None and len(units) == 1 and isinstance(units[0], Program):
                    # the whole pass is one program: its edges and it in one call
                    self._whole = (start, end, gen, units[0])
        if dirty and end < len(self.net.layers) - 1:
            # the steps beyond this partial pass may read what changed: a new generation,
            # in which only this pass's steps are up to date
            self.gen += 1
            for st in steps:
                st.gen = self.gen
        self.shaped_at = epoch
        return loss if parts is None else parts

    def _run_programs(self, start, end, steps, gen, epoch):
        """Run the steps of a pass whose steps were all prepared in this generation, with runs
        of consecutive steps that have native phases as one Program each (layers/program.py).
        Returns (index of the first step not run, dirty, epoch): it stops after a step that
        changed a blob's shape or memory."""
        made = self._programs.get((start, end))
        if made is None or made[0] != gen or made[1] is None or made[1] is _SEEN:
            return 0, False, epoch
        at = 0
        for unit in made[1]:
            if isinstance(unit, Program):
                n = len(unit.runs)
                self.failed = steps[at].index
                if not unit.run():
                    for st in steps[at:at + n]:
                        self.failed = st.index
                        st.run()
                at += n
                continue
            self.failed = unit.index
            unit.run()
            at += 1
            if _blob.shape_epoch != epoch:
                return at, True, _blob.shape_epoch
        return at, False, epoch

    def backward(self, start, end, after=()):
        """Backward over layers start down to end; `after`: hooks called with each layer's
        index after its step (every layer, run or skipped; after a group, for each of its
        layers, last first)."""
        if after:
            return self._backward_hooked(start, end, after)
        steps = self.backward_steps(start, end)
        self.failed = start
        with parallel.cpu_pass() if self.cpu else _NoPass():
            for step in steps:
                self.failed = step[0]
                step[1](step[2], step[3], step[4])

    def _backward_hooked(self, start, end, after):
        net = self.net
        need = net.layer_need_backward
        with parallel.cpu_pass() if self.cpu else _NoPass():
            i = start
            while i >= end:
                self.failed = i
                g = self.by_last.get(i)
                if g is not None and g.first >= end:
                    g.run_backward()
                    for j in range(i, g.first - 1, -1):
                        for fn in after:
                            fn(j)
                    i = g.first - 1
                    continue
                if need[i]:
                    net.layers[i].backward(net.top_vecs[i], net.bottom_need_backward[i],
                                           net.bottom_vecs[i])
                for fn in after:
                    fn(i)
                i -= 1


_SEEN = ()      # a range passed over once in its generation: no programs yet
# False: every pass runs its steps one by one (for A/B comparisons: benchmarks/ab.py --set
# caffe_lite.plan.PROGRAMS=0)
PROGRAMS = True
# False: a pass that is one program opens its edges in Python and runs the program as a part
# (for A/B comparisons: --set caffe_lite.plan.WHOLE=0)
WHOLE = True


def _programs(steps):
    """The units a pass over `steps` runs: a Program for each run of consecutive steps whose
    prepared callables have native phases, the other steps as they are; None where a step
    carries a loss or reshapes on every pass, or where the spinning pool cannot run (no
    numba, CAFFE_LITE_SPIN=0, another BLAS): the plain loop runs those passes."""
    if any(st.loss is not None or st.always for st in steps) or \
            not gemm_pool.available(parallel._blas_libraries()):
        return None
    units, runs = [], []
    for st in steps:
        if gemm_pool.phases_of(st.run) is not None:
            runs.append(st.run)
            continue
        if runs:
            units.append(Program(runs))
            runs = []
        units.append(st)
    if runs:
        units.append(Program(runs))
    return units


def _pending(index):
    from .net import _Pending
    return _Pending(index)


def _gpu_step(layer, bottom, top):
    """(reshape, prepare) of a layer's GPU step."""
    fwd = layer.forward_gpu

    def reshape(bottom, top):
        layer.reshape(bottom, top)
        layer._reshape_key = None  # (Layer.reshape_if_changed's memo is stale)

    def prepare():
        return lambda: fwd(bottom, top)
    return reshape, prepare


def _prepare_layer(layer, bottom, top):
    """prepare() of a layer's CPU step: its prepare_cpu, else its forward_cpu on the blobs."""
    def prepare():
        run = layer.prepare_cpu(bottom, top) if layer.uses_prepared() else None
        if run is None:
            fwd = layer.forward_cpu
            return lambda: fwd(bottom, top)
        return run
    return prepare


class _NoPass:
    __slots__ = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
