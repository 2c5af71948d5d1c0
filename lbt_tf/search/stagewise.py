"""A first-order backward through the supernet one stage at a time, from stage inputs kept by an
earlier forward (checkpoints): darts.py's recomputed pass of the teacher's soft labels P, and
with --arch_product=layerwise finite differences' perturbed passes and the diagnostic val pass
(SearchProblem.stagewise_loss_gradient: one more forward each).

That pass runs forward twice anyway: once for P's values (the student stages need them), then
again with its backward once P's seed (the soft product) exists. Keeping the stage inputs of the
first forward (`forward`: the supernet as its chain `model.stages()`, a few feature maps per
stage, ~2 MB each at the paper's setting) lets the second run stage by stage (`backward`): each
stage's forward redone from its input right before its own backward, so one stage's
activations are alive instead of a whole pass's (~1.7 GB at the paper's setting), for the same
arithmetic. The arch inputs (softmax rows, Gumbel-sampled width weights) are made once per
function from the same arch and non-trainable values (the width noise comes from the seed
generator's state among those), so both runs see the same draw.
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import learner as lrn


def forward(learner, weights, arch, images, stage_weights=None):
    """(the model's outputs, the inputs of stages 1 .. n-1 as values): one training forward.
    `stage_weights(i, value)`: weight i as the stages run with it (e.g. T + eps v), made where
    a stage first reads it, once that stage's input exists: such a copy exists one stage at a
    time."""
    model = learner.model
    stages = model.stages()
    non_trainable = learner.non_trainable_values()  # read once for every stage
    with learner.stateless_scope(weights, arch, non_trainable):
        arch_inputs = model.arch_inputs()
    x, checkpoints = images, []
    for k, stage in enumerate(stages):
        if k > 0:
            checkpoints.append(tf.nest.map_structure(tf.stop_gradient, x))
        with lrn.after(x if k > 0 else None), learner.stateless_scope(
                weights, arch, non_trainable, weight_transform=stage_weights):
            x = stage(x, arch_inputs, True)
    return x, checkpoints


def backward(learner, weights, arch, images, checkpoints, head, seed, what, stage_weights=None,
             weights_too=True):
    """d/d(weights, arch) of <seed, head(outputs)> (gradients as `tape.gradient` returns them:
    None for a weight without a path; seed None for a scalar head), the last stage first, each
    stage's forward redone from its checkpoint once the later stage's gradient exists
    (lrn.after). `stage_weights` as in `forward` (the gradient is then still w.r.t. `weights`);
    without `weights_too` only the arch gradient is taken (weight gradients all None: no filter
    gradients computed)."""
    model = learner.model
    stages = model.stages()
    non_trainable = learner.non_trainable_values()  # read once for every stage
    with tf.GradientTape() as arch_tape:
        arch_tape.watch(arch)
        with learner.stateless_scope(weights, arch, non_trainable):
            arch_inputs = model.arch_inputs()
    flat_arch = tf.nest.flatten(arch_inputs)
    live = [i for i, t in enumerate(flat_arch) if t is not None]
    weight_grads = [None] * len(weights)
    leaf_grads = [None] * len(live)
    x_grad = seed
    for k in range(len(stages) - 1, -1, -1):
        with lrn.after(x_grad):
            x_in = tf.nest.map_structure(tf.identity, checkpoints[k - 1]) if k > 0 else images
            leaves = [None if t is None else tf.identity(tf.stop_gradient(t)) for t in flat_arch]
            watched_x = tf.nest.flatten(x_in) if k > 0 else []
            watched_w = list(weights) if weights_too else []
            watched = watched_x + watched_w + [leaves[i] for i in live]
            with tf.GradientTape() as tape:
                tape.watch(watched)
                with learner.stateless_scope(weights, arch, non_trainable,
                                             weight_transform=stage_weights):
                    y = stages[k](x_in, tf.nest.pack_sequence_as(arch_inputs, leaves), True)
                if k == len(stages) - 1:
                    y = head(y)
            grads = tape.gradient(y, watched, output_gradients=x_grad)
        num_x, num_w = len(watched_x), len(watched_w)
        if weights_too:
            weight_grads = [sum_gradients(a, b)
                            for a, b in zip(weight_grads, grads[num_x:num_x + num_w])]
        leaf_grads = [sum_gradients(a, b) for a, b in zip(leaf_grads, grads[num_x + num_w:])]
        if k > 0:
            x_grad = tf.nest.pack_sequence_as(checkpoints[k - 1], lrn.checked_gradients(
                grads[:num_x], [f"stage {k} input"] * num_x, what))
    used = [j for j, g in enumerate(leaf_grads) if g is not None]
    arch_grads = arch_tape.gradient([flat_arch[live[j]] for j in used], arch,
                                    output_gradients=[leaf_grads[j] for j in used])
    return weight_grads, list(arch_grads)


def sum_gradients(a, b):
    """a + b where either may be None (no path)."""
    if a is None:
        return b
    return a if b is None else a + b
