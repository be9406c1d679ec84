"""[net]'s training options -> a Caffe SolverParameter.

darknet's update (lr / batch times the summed gradient, decay * batch added to it) is Caffe's
SGD with base_lr = learning_rate and weight_decay = decay on the batch-mean gradient; the
policies map one to one (darknet's batch counter is Caffe's iteration).  burn_in, darknet's
warm-up lr * (iter / burn_in)^power, has no Caffe policy: it is dropped (the documented
approximation), and said so in the file."""
import os

from ...proto import caffe_pb2
from .layers import DarknetError


def _policy(net, sp):
    policy = net.str("policy", "constant")
    if policy == "constant":
        sp.lr_policy = "fixed"
    elif policy == "step":
        sp.lr_policy, sp.stepsize = "step", net.int("step", 1)
        sp.gamma = net.float("scale", 1)
    elif policy == "steps":
        steps, scales = net.ints("steps"), net.floats("scales")
        if len(steps) != len(scales) or not steps:
            raise net.error(f"steps={net.options.get('steps')} and scales="
                            f"{net.options.get('scales')} must be lists of one length")
        if len(set(scales)) != 1:
            raise net.error(f"scales={net.options['scales']}: Caffe's multistep policy "
                            "multiplies by one gamma at every step; differing scales have no "
                            "Caffe equivalent")
        if any(s < 0 for s in steps):
            raise net.error(f"steps={net.options['steps']}: negative steps have no Caffe "
                            "equivalent")
        sp.lr_policy, sp.gamma = "multistep", scales[0]
        sp.stepvalue.extend(steps)
    elif policy == "exp":
        sp.lr_policy, sp.gamma = "exp", net.float("gamma", 1)
    elif policy == "poly":
        sp.lr_policy, sp.power = "poly", net.float("power", 4)
    elif policy == "sigmoid":
        # darknet: lr / (1 + exp(gamma * (iter - step))); Caffe: lr / (1 + exp(-gamma * ...))
        sp.lr_policy, sp.gamma = "sigmoid", -net.float("gamma", 1)
        sp.stepsize = net.int("step", 1)
    else:
        raise net.error(f"policy={policy} has no Caffe learning-rate policy (supported: "
                        "constant, step, steps, exp, poly, sigmoid)")


def solver_from_net(net, model_path, solver_path):
    """(SolverParameter, [comment line]) for the [net] section `net`."""
    sp = caffe_pb2.SolverParameter()
    rel = os.path.relpath(os.path.abspath(model_path),
                          os.path.dirname(os.path.abspath(solver_path)))
    sp.net = rel
    sp.base_lr = net.float("learning_rate", 0.001)
    sp.momentum = net.float("momentum", 0.9)
    sp.weight_decay = net.float("decay", 0.0001)
    _policy(net, sp)
    max_batches = net.int("max_batches", 0)
    if max_batches <= 0:
        if sp.lr_policy == "poly":
            raise net.error("policy=poly needs max_batches > 0")
        max_batches = 0
    sp.max_iter = max_batches
    batch, subdivisions = net.int("batch", 1), net.int("subdivisions", 1)
    if subdivisions <= 0 or batch <= 0 or batch % subdivisions:
        raise DarknetError(f"{net.where()}: batch={batch} must be a positive multiple of "
                           f"subdivisions={subdivisions}")
    if subdivisions > 1:
        sp.iter_size = subdivisions
    sp.snapshot_prefix = os.path.splitext(os.path.basename(model_path))[0]
    sp.solver_mode = caffe_pb2.SolverParameter.CPU
    notes = [f"from darknet's [net]: batch={batch} subdivisions={subdivisions}: use "
             f"batch_size {batch // subdivisions} in the train net's data layer"
             + (f" (iter_size {subdivisions} accumulates {batch} images per iteration)"
                if subdivisions > 1 else ""),
             "net: points at the deploy prototxt; train with a copy that has a data layer and "
             "a loss instead of its Input layer"]
    burn_in = net.int("burn_in", 0)
    if burn_in > 0:
        notes.append(f"darknet's burn_in={burn_in} (lr * (iter / {burn_in})^"
                     f"{net.float('power', 4):g} for the first {burn_in} iterations) has no "
                     "Caffe policy and is left out: the rate starts at the policy's value")
    return sp, notes
