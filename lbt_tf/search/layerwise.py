"""lbt / exact: the teacher product h_A(v) = d2 L(T, A; D_t^tr)/dA dT . v one stage at a time.

Reverse-over-reverse over the whole pass (reverse_over_reverse.symbolic_product) keeps the
forward's and the first backward's activations of every cell for the second backward: +5.2 GB
at the paper's setting. Here the supernet is its chain of stages (`model.stages()`: stem, one
per layer of cells, last layer + heads), x_{k+1} = f_k(x_k; T, A), L = H(x_n), and the product
is built from per-stage pieces, each recomputing its stage from a stored input; only the stage
boundaries (a few feature maps per stage) are kept between stages. With a_k = dL/dx_k (the
first backward) and s = grad_T L . v = sum_k <J_T f_k^T a_{k+1}, v>, reverse mode on s gives
    adot_{k+1} = J_x f_k adot_k + J_T f_k v          (the tangent of x along v: a forward sweep)
    q_k        = <J_x f_k^T a_{k+1}, adot_k> + <J_T f_k^T a_{k+1}, v>
               (adot_{k+1}, c_k, Abar_k) = d q_k / d(a_{k+1}, x_k, A_k)   (one double backward)
    xbar_n = c_n;  (xbar_k, Abar'_k) = J_(x, A) f_k^T xbar_{k+1} + (c_k, 0)  (a backward sweep)
    h_A(v) = sum_k Abar_k + Abar'_k
so the passes are: forward (x_k kept), backward (a_k kept), forward with the double backward
per stage (c_k kept), backward; each stage's activations live only inside its own piece. The
same values as the whole-pass product (tests/search/test_layerwise.py); the cost is the
recomputation (three more forwards, two more first-order backwards).
Graph only (tf.gradients); every piece starts once the previous piece's result exists
(lrn.after), and every tensor crossing pieces enters through tf.stop_gradient, so each
tf.gradients call sees its own piece only.
"""
from __future__ import annotations

import tensorflow as tf

from lbt_tf.search import learner as lrn

WHAT = "exact (layerwise)"


def _checked(grads, what):
    if any(g is None for g in grads):
        raise lrn.HypergradientError(f"{WHAT}: {what} is None (an op on the path has no "
                                     "(second-order) gradient; see shared/notes/second-order-tf.md)")
    return list(grads)


def _held(tensors):
    return [tf.stop_gradient(t) for t in tensors]


def layerwise_product(problem, weights, arch, v, batch):
    """h_A(v), one tensor per arch tensor (graph mode: inside a tf.function)."""
    images, labels = batch
    learner = problem.teacher
    model = learner.model
    stages = model.stages()
    last = len(stages) - 1
    non_trainable = learner.non_trainable_values()

    with learner.stateless_scope(weights, arch, non_trainable):
        arch_inputs = model.arch_inputs()   # with sampled widths: drawn once, for every piece
    flat_arch = tf.nest.flatten(arch_inputs)
    live = [i for i, t in enumerate(flat_arch) if t is not None]
    structures = [images]   # stage k's input structure

    def stage(k, x_flat, stage_weights):
        """(stage k's output (the loss for the last), flat; its arch inputs as leaves)."""
        leaves = [None if t is None else tf.stop_gradient(t) for t in flat_arch]
        x = tf.nest.pack_sequence_as(structures[k], x_flat)
        with learner.stateless_scope(stage_weights, arch, non_trainable):
            y = stages[k](x, tf.nest.pack_sequence_as(arch_inputs, leaves), True)
        if k == last:
            y = lrn.teacher_seg_loss(y, labels, problem.ignore_label)
        elif len(structures) == k + 1:
            structures.append(y)
        return tf.nest.flatten(y), [leaves[i] for i in live]

    # Forward: only the stage inputs are kept.
    xs = [[images]]
    for k in range(last):
        y, _ = stage(k, xs[k], weights)
        xs.append(_held(y))

    # Backward: a[k] = dL/dx_k, each stage recomputed from its input.
    a = [None] * (last + 2)
    for k in range(last, 0, -1):
        with lrn.after(a[k + 1]):
            x_in = _held(xs[k])
            y, _ = stage(k, x_in, weights)
            a[k] = _checked(tf.gradients(y, x_in, grad_ys=None if k == last else _held(a[k + 1])),
                            f"dL/dx at stage {k}")

    # Forward with the double backward per stage: the tangent, c[k] and Abar.
    arch_bar = [None] * len(live)
    c = [None] * (last + 1)
    tangent = None
    for k in range(last + 1):
        with lrn.after(tangent, a[k + 1]):
            x_in = _held(xs[k]) if k > 0 else []
            stage_weights = [tf.identity(w) for w in weights]   # tf.gradients sees this piece only
            a_out = [tf.identity(t) for t in _held(a[k + 1])] if k < last else None
            y, leaves = stage(k, x_in if k > 0 else xs[0], stage_weights)
            first = tf.gradients(y, x_in + stage_weights, grad_ys=a_out)
            first_x, first_w = _checked(first[:len(x_in)], f"J_x^T a at stage {k}"), first[len(x_in):]
            targets = first_x + [g for g in first_w if g is not None]
            seeds = _held(tangent or []) + [d for g, d in zip(first_w, v) if g is not None]
            wrt = x_in + leaves + (a_out or [])
            second = tf.gradients(targets, wrt, grad_ys=seeds)
            c[k] = _checked(second[:len(x_in)], f"d q / dx at stage {k}")
            arch_bar = [s if t is None else (t if s is None else s + t)
                        for s, t in zip(arch_bar, second[len(x_in):len(x_in) + len(leaves)])]
            if k < last:
                tangent = _checked(second[len(x_in) + len(leaves):], f"tangent after stage {k}")

    # Backward through the stages with arch inputs, from xbar_n = c_n.
    x_bar = c[last]
    for k in range(last - 1, 0, -1):
        with lrn.after(x_bar):
            x_in = _held(xs[k])
            y, leaves = stage(k, x_in, weights)
            grads = tf.gradients(y, x_in + leaves, grad_ys=_held(x_bar))
            x_bar = [g + ck for g, ck in zip(_checked(grads[:len(x_in)], f"xbar at stage {k}"), c[k])]
            arch_bar = [s if t is None else (t if s is None else s + t)
                        for s, t in zip(arch_bar, grads[len(x_in):])]

    used = [j for j, g in enumerate(arch_bar) if g is not None]
    with lrn.after(x_bar):
        return tf.gradients([flat_arch[live[j]] for j in used], arch,
                            grad_ys=[arch_bar[j] for j in used])
