"""Reading a solver.prototxt: the deprecated solver_type upgrade, net-path resolution and the
checks Caffe makes before training, plus range checks on every number the solver reads."""
import logging
import math
import os

from ..errors import SolverError
from ..io.prototxt import load_message
from ..proto import caffe_pb2
from .lr_policy import check_policy

log = logging.getLogger("caffe_lite")

_SP = caffe_pb2.SolverParameter
_TYPE_NAMES = {_SP.SGD: "SGD", _SP.NESTEROV: "Nesterov", _SP.ADAGRAD: "AdaGrad",
               _SP.RMSPROP: "RMSProp", _SP.ADADELTA: "AdaDelta", _SP.ADAM: "Adam"}


def upgrade_solver_type(param, source=""):
    """Caffe's UpgradeSolverType: the enum `solver_type` becomes the string `type`."""
    if param.HasField("solver_type"):
        if param.HasField("type"):
            raise SolverError(f"{source}: the deprecated solver_type ({_SP.SolverType.Name(param.solver_type)}) "
                              f"and type ('{param.type}') are both set; keep only type")
        param.type = _TYPE_NAMES[param.solver_type]
        param.ClearField("solver_type")
    return param


def resolve_path(path, base_dir, what, source):
    """Caffe resolves paths against the working directory.  When that fails, look beside the
    solver file, and for the file name alone beside it (solvers from Caffe's examples name
    paths like examples/mnist/lenet_train_test.prototxt)."""
    if os.path.isabs(path) or os.path.exists(path) or base_dir is None:
        if not os.path.exists(path):
            raise SolverError(f"{source}: {what} '{path}' not found")
        return path
    for cand in (os.path.join(base_dir, path), os.path.join(base_dir, os.path.basename(path))):
        if os.path.exists(cand):
            log.info("Using %s %s (resolved from '%s')", what, cand, path)
            return cand
    raise SolverError(f"{source}: {what} '{path}' not found (looked in the working directory "
                      f"and in {base_dir})")


def load_solver_param(source):
    """A SolverParameter from a path / text / message, upgraded, with net file paths resolved
    and Caffe's configuration checks applied."""
    param, path = load_message(source, caffe_pb2.SolverParameter, "solver prototxt")
    where = path or "<solver>"
    base_dir = os.path.dirname(os.path.abspath(path)) if path else None
    upgrade_solver_type(param, where)
    if param.HasField("net"):
        param.net = resolve_path(param.net, base_dir, "net", where)
    if param.HasField("train_net"):
        param.train_net = resolve_path(param.train_net, base_dir, "train_net", where)
    for i, t in enumerate(param.test_net):
        param.test_net[i] = resolve_path(t, base_dir, "test_net", where)
    check_solver_param(param, where)
    return param


def check_solver_param(param, where="<solver>"):
    train_sources = [f for f in ("train_net_param", "train_net", "net_param", "net")
                     if param.HasField(f)]
    if not train_sources:
        raise SolverError(f"{where}: no train net: set one of net, net_param, train_net, "
                          "train_net_param")
    if len(train_sources) > 1:
        raise SolverError(f"{where}: more than one train net given ({', '.join(train_sources)}); "
                          "set exactly one")
    if param.HasField("net") and param.HasField("net_param"):
        raise SolverError(f"{where}: both net and net_param are set")
    if param.iter_size < 1:
        raise SolverError(f"{where}: iter_size must be >= 1, got {param.iter_size}")
    if param.regularization_type not in ("L1", "L2"):
        raise SolverError(f"{where}: unknown regularization_type '{param.regularization_type}' "
                          "(L1 or L2)")
    if not param.lr_policy:
        raise SolverError(f"{where}: lr_policy is not set (fixed, step, exp, inv, multistep, "
                          "poly or sigmoid)")
    try:
        check_policy(param)
    except SolverError as exc:
        raise SolverError(f"{where}: {exc}") from None
    generic = param.HasField("net") or param.HasField("net_param")
    explicit = len(param.test_net_param) + len(param.test_net)
    n_iter = len(param.test_iter)
    if (n_iter < explicit) if generic else (n_iter != explicit):
        if explicit == 0 and not generic:
            raise SolverError(f"{where}: test_iter is given ({n_iter} value(s)) but there is no "
                              "test net (set test_net, test_net_param, or use net/net_param)")
        raise SolverError(f"{where}: test_iter must be given once per test net: "
                          f"{explicit} explicit test net(s), {n_iter} test_iter value(s)")
    instances = n_iter if generic else explicit
    if param.test_state and len(param.test_state) != instances:
        raise SolverError(f"{where}: {len(param.test_state)} test_state(s) for {instances} "
                          "test net(s); give none or one per test net")
    if instances and param.test_interval <= 0:
        raise SolverError(f"{where}: test nets are configured but test_interval is "
                          f"{param.test_interval}; set test_interval > 0")
    if param.snapshot < 0:
        raise SolverError(f"{where}: snapshot interval must be >= 0")
    if param.average_loss < 1:
        raise SolverError(f"{where}: average_loss must be >= 1")
    try:
        check_numbers(param)
    except SolverError as exc:
        raise SolverError(f"{where}: {exc}") from None


# Solver types whose update divides by sqrt(history) + delta (or of it): delta must be > 0.
_USES_DELTA = ("AdaGrad", "RMSProp", "AdaDelta", "Adam")


def check_numbers(param):
    """Range checks on the numbers the solver loop and the updates read (the learning-rate
    policy's are check_policy's)."""
    def need(ok, name, rule):
        if not ok:
            raise SolverError(f"{name} must be {rule}, got {getattr(param, name):g}")
    for name in ("max_iter", "display", "test_interval", "device_id"):
        need(getattr(param, name) >= 0, name, ">= 0")
    for i, n in enumerate(param.test_iter):
        if n < 0:
            raise SolverError(f"test_iter must be >= 0, got {n} (test net #{i})")
    for name in ("momentum", "weight_decay"):
        need(math.isfinite(getattr(param, name)) and getattr(param, name) >= 0, name,
             "finite and >= 0")
    need(not math.isnan(param.clip_gradients), "clip_gradients", "a number (< 0: no clipping)")
    t = param.type
    if t in _USES_DELTA:
        need(math.isfinite(param.delta) and param.delta > 0, "delta",
             f"finite and > 0 for {t}")
    if t == "AdaDelta":
        need(param.momentum <= 1, "momentum", "<= 1 for AdaDelta (its decay rate)")
    if t == "Adam":
        need(param.momentum < 1, "momentum", "< 1 for Adam (its beta1)")
        need(0 <= param.momentum2 < 1, "momentum2", "in [0, 1) for Adam")
    if any(ord(c) < 32 or ord(c) == 127 for c in param.snapshot_prefix):
        raise SolverError(f"snapshot_prefix {param.snapshot_prefix!r} holds a NUL or control "
                          "character; snapshots could not be written under that name")


def net_params(param):
    """(train NetParameter, [test NetParameter]) with their NetStates as Caffe sets them."""
    from ..io.upgrade import upgrade_net

    def read(path):
        return load_message(path, caffe_pb2.NetParameter, "net prototxt")[0]

    if param.HasField("train_net_param"):
        train = caffe_pb2.NetParameter()
        train.CopyFrom(param.train_net_param)
    elif param.HasField("train_net"):
        train = read(param.train_net)
    elif param.HasField("net_param"):
        train = caffe_pb2.NetParameter()
        train.CopyFrom(param.net_param)
    else:
        train = read(param.net)
    state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
    state.MergeFrom(train.state)
    state.MergeFrom(param.train_state)
    train.state.CopyFrom(state)
    upgrade_net(train, param.train_net or param.net or "<train net>")

    tests = []
    for p in param.test_net_param:
        n = caffe_pb2.NetParameter()
        n.CopyFrom(p)
        tests.append(n)
    tests += [read(p) for p in param.test_net]
    explicit = len(tests)
    if param.HasField("net") or param.HasField("net_param"):
        for _ in range(len(param.test_iter) - explicit):
            if param.HasField("net_param"):
                n = caffe_pb2.NetParameter()
                n.CopyFrom(param.net_param)
            else:
                n = read(param.net)
            tests.append(n)
    for i, n in enumerate(tests):
        state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
        state.MergeFrom(n.state)
        if param.test_state:
            state.MergeFrom(param.test_state[i])
        n.state.CopyFrom(state)
        upgrade_net(n, "<test net>")
    return train, tests

