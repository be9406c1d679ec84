"""Gradual pruning: the cubic schedule, the solver callback, and resuming it from a snapshot."""
import numpy as np
import pytest

from caffe_lite.cli import main
from caffe_lite.pruning import GradualPruner, PruningError, cubic_sparsity
from caffe_lite.solvers import get_solver

from pruning_nets import mlp_solver


def test_cubic_schedule_values():
    # s_t = s_f + (s_i - s_f)(1 - (t - t0) / (n dt))^3 with s_i 0, s_f 0.8, t0 10, n 4, dt 10.
    s = [cubic_sparsity(t, 0.0, 0.8, 10, 4, 10) for t in (5, 10, 20, 30, 40, 50, 60)]
    assert s[0] is None
    assert s[1:] == pytest.approx([0.0, 0.8 - 0.8 * 0.75 ** 3, 0.8 - 0.8 * 0.125,
                                   0.8 - 0.8 * 0.25 ** 3, 0.8, 0.8])
    assert cubic_sparsity(10, 0.2, 0.6, 10, 1, 5) == pytest.approx(0.2)


def _zeros(solver, layer):
    return int(np.sum(solver.net.params[layer][0].data == 0))


class Recorder:
    def __init__(self):
        self.masks = []

    def on_gradients_ready(self, solver):
        self.masks.append({n: solver.net.params[n][0].mask.copy() for n in ("ip1", "ip2")})


def test_gradual_pruner_follows_the_schedule_and_masks_only_shrink(tmp_path):
    solver = get_solver(str(mlp_solver(tmp_path, max_iter=25)))
    spec = ('sparsity: 0.8 layer { name: "ip2" sparsity: 0.5 } '
            'gradual { begin_iter: 5 num_steps: 3 frequency: 5 }')
    pruner = GradualPruner(solver, spec).attach()
    assert pruner.step_iters() == [5, 10, 15, 20]
    rec = Recorder()
    solver.callbacks.append(rec)
    seen = {}

    class Probe:
        def on_gradients_ready(self, s):
            seen[s.iter] = (_zeros(s, "ip1"), _zeros(s, "ip2"))
    solver.callbacks.append(Probe())
    solver.step(25)
    for t in (5, 10, 15, 20, 24):
        s1 = cubic_sparsity(t, 0, 0.8, 5, 3, 5)
        s2 = cubic_sparsity(t, 0, 0.5, 5, 3, 5)
        assert seen[t] == (int(np.floor(s1 * 60 + 0.5)), int(np.floor(s2 * 30 + 0.5))), t
    assert seen[4] == (0, 0)
    for before, after in zip(rec.masks, rec.masks[1:]):
        for n in before:
            assert np.all(after[n] <= before[n])  # never regrows
    assert _zeros(solver, "ip1") == 48 and _zeros(solver, "ip2") == 15
    assert pruner.applied == 20
    assert pruner.state_dict()["applied_iter"] == 20


def _final_weights(solver):
    return {n: [b.data.copy() for b in p] for n, p in solver.net.params.items()}


SPEC = 'sparsity: 0.7 gradual { begin_iter: 2 num_steps: 4 frequency: 4 }'


def test_resume_continues_the_schedule(tmp_path):
    full = get_solver(str(mlp_solver(tmp_path / "a", max_iter=24)))
    GradualPruner(full, SPEC).attach()
    full.solve()
    ref = _final_weights(full)

    part = get_solver(str(mlp_solver(tmp_path / "b", max_iter=24, snapshot=11)))
    GradualPruner(part, SPEC).attach()
    part.step(11)
    part.snapshot()
    state = tmp_path / "b" / "snap" / "mlp_iter_11.solverstate"
    resumed = get_solver(str(mlp_solver(tmp_path / "b", max_iter=24)))
    pruner = GradualPruner(resumed, SPEC).attach()
    resumed.restore(str(state))
    assert pruner.applied == 10 and [h[0] for h in pruner.history] == [2, 6, 10]
    resumed.solve()
    for n, blobs in ref.items():
        for a, b in zip(blobs, resumed.net.params[n]):
            np.testing.assert_array_equal(b.data, a)


def test_resume_from_a_snapshot_without_the_pruner_catches_up(tmp_path):
    plain = get_solver(str(mlp_solver(tmp_path, max_iter=24)))
    plain.step(13)
    plain.param.snapshot_prefix = str(tmp_path / "snap" / "x")
    plain.snapshot()
    resumed = get_solver(str(mlp_solver(tmp_path, max_iter=24)))
    pruner = GradualPruner(resumed, SPEC).attach()
    resumed.restore(str(tmp_path / "snap" / "x_iter_13.solverstate"))
    resumed.step(1)
    assert pruner.applied == 10  # the step due at 10 applied at once, on iteration 13
    assert _zeros(resumed, "ip1") == int(np.floor(cubic_sparsity(10, 0, 0.7, 2, 4, 4) * 60 + 0.5))


@pytest.mark.parametrize("spec, kw, message", [
    ('method: "std" gradual { }', {}, "std has no sparsity target"),
    ('sparsity: 0.5 gradual { num_steps: 0 }', {}, "num_steps (0)"),
    ('sparsity: 0.5 gradual { initial_sparsity: 1.2 }', {}, "initial_sparsity"),
    ('gradual { final_sparsity: 0.5 } layer { name: "ip9" sparsity: 0.1 }', {}, "'ip9'"),
    ('method: "l1-filter" gradual { final_sparsity: 0.99 }', {}, "would remove all"),
])
def test_bad_schedules_are_errors(tmp_path, spec, kw, message):
    solver = get_solver(str(mlp_solver(tmp_path)))
    with pytest.raises(PruningError) as exc:
        GradualPruner(solver, spec, **kw)
    assert message in str(exc.value)


def _snapshot_zeros(d, it):
    import caffe_lite
    net = caffe_lite.Net(str(d / "mlp.prototxt"), caffe_lite.TEST,
                         weights=str(d / "snap" / f"mlp_iter_{it}.caffemodel"))
    return {n: int(np.sum(net.params[n][0].data == 0)) for n in ("ip1", "ip2")}


def test_train_command_prunes_gradually(tmp_path, capsys):
    d = tmp_path / "spec"
    solver = mlp_solver(d, max_iter=20, extra="snapshot_after_train: true")
    spec = d / "spec.prototxt"
    spec.write_text('layer { name: "ip2" exclude: true } '
                    'gradual { final_sparsity: 0.5 begin_iter: 0 num_steps: 2 frequency: 5 }')
    assert main(["train", "-solver", str(solver), "-prune_spec", str(spec)]) == 0
    assert _snapshot_zeros(d, 20) == {"ip1": 30, "ip2": 0}
    # The same from flags alone (global: one threshold over ip1 and ip2).
    d = tmp_path / "flags"
    solver = mlp_solver(d, max_iter=20, extra="snapshot_after_train: true")
    assert main(["train", "-solver", str(solver), "-prune_sparsity", "0.6",
                 "-prune_schedule", "0,2,5", "-prune_method", "global"]) == 0
    assert sum(_snapshot_zeros(d, 20).values()) == round(0.6 * 90)
    capsys.readouterr()
    assert main(["train", "-solver", str(solver), "-prune_schedule", "0,2", "-overwrite"]) == 1
    assert "-prune_schedule takes BEGIN,STEPS,EVERY" in capsys.readouterr().err


def test_gradual_l1_filter_keeps_removed_channels_dead_while_training(tmp_path):
    solver = get_solver(str(mlp_solver(tmp_path, max_iter=20)))
    GradualPruner(solver, 'method: "l1-filter" sparsity: 0.5 '
                          'gradual { num_steps: 2 frequency: 4 }').attach()
    solver.solve()
    w, b = (p.data for p in solver.net.params["ip1"])
    dead = [c for c in range(10) if not w[c].any()]
    assert len(dead) == 5
    # The bias of a removed filter and the next layer's input columns stayed 0 through the
    # remaining 12 updates (with momentum and weight decay): they are masked too.
    assert not b[dead].any() and b[[c for c in range(10) if c not in dead]].all()
    assert not solver.net.params["ip2"][0].data[:, dead].any()


@pytest.mark.parametrize("solver_type", ["SGD", "Adam"])
def test_history_of_weights_pruned_mid_run_is_zero(tmp_path, solver_type):
    # Momentum built up before a weight is pruned must not survive the pruning step: the
    # history of every masked entry is exactly 0 afterwards, as for weights pruned up front.
    extra = f'type: "{solver_type}"' + (" momentum2: 0.999" if solver_type == "Adam" else "")
    solver = get_solver(str(mlp_solver(tmp_path, max_iter=12, extra=extra)))
    GradualPruner(solver, 'sparsity: 0.6 gradual { begin_iter: 6 num_steps: 1 frequency: 3 }'
                  ).attach()
    solver.step(6)
    w = solver.net.params["ip1"][0]
    assert w.mask.all() and np.count_nonzero(solver.history[0]) == w.count  # momentum built up
    solver.step(4)  # prunes at 6 and 9
    n = solver.n_params
    pruned = w.mask == 0
    assert pruned.sum() == 36  # 60 % of ip1's 60 weights
    for k in range(solver.history_per_param):
        h = solver.history[k * n]
        assert np.all(h[pruned] == 0.0)
        assert np.count_nonzero(h[~pruned]) == (~pruned).sum()
    assert np.all(w.data[pruned] == 0.0)


class _Counter:
    """A stateful solver callback with plain and array state."""
    state_key = "counter"

    def __init__(self):
        self.n, self.seen = 0, np.zeros(3, np.int64)

    def on_start(self, solver):
        self.n += 1
        self.seen[self.n % 3] += self.n

    def state_dict(self):
        return {"n": self.n, "seen": self.seen.copy()}

    def load_state_dict(self, state):
        self.n, self.seen = state["n"], state["seen"]


def test_callback_state_travels_in_the_sidecar(tmp_path, caplog):
    part = get_solver(str(mlp_solver(tmp_path, max_iter=24)))
    part.callbacks.append(_Counter())
    part.step(7)
    part.param.snapshot_prefix = str(tmp_path / "snap" / "x")
    part.snapshot()
    resumed = get_solver(str(mlp_solver(tmp_path, max_iter=24)))
    cb = _Counter()
    resumed.callbacks.append(cb)
    resumed.restore(str(tmp_path / "snap" / "x_iter_7.solverstate"))
    assert cb.n == 7 and cb.seen.tolist() == [3 + 6, 1 + 4 + 7, 2 + 5]
    assert cb.seen.dtype == np.int64
    # a run without that callback is told the saved state is ignored
    plain = get_solver(str(mlp_solver(tmp_path, max_iter=24)))
    plain.restore(str(tmp_path / "snap" / "x_iter_7.solverstate"))
    assert "solver callback 'counter'" in caplog.text
