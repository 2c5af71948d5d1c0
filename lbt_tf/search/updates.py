"""Applying updates safely: replica means, the finite check, and `apply_if_finite` (shared by the
architecture step in unrolled.py and the weight steps in lbt_model.py)."""
from __future__ import annotations

import keras
import tensorflow as tf


def all_finite(tensors):
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


def norm_finite(tensors):
    """Whether the global norm of the floating tensors is finite: every entry is, and the sum
    of squares does not overflow. One op per tensor (`all_finite`: two), for long lists."""
    floats = [t for t in tensors if t.dtype.is_floating]
    return tf.math.is_finite(tf.linalg.global_norm(floats)) if floats else tf.constant(True)


def replica_mean(values):
    """All-reduce mean of the floating tensors across replicas (identity without a strategy;
    integer state such as seed-generator counters is identical on every replica)."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return values
    flat = tf.nest.flatten(values)
    floats = [t for t in flat if t.dtype.is_floating]
    reduced = iter(ctx.all_reduce(tf.distribute.ReduceOp.MEAN, floats))
    return tf.nest.pack_sequence_as(
        values, [next(reduced) if t.dtype.is_floating else t for t in flat])


def sgd_apply(optimizer, grads, variables):
    """Keras SGD's update of `variables` (decoupled weight decay, then momentum; as
    `optimizer.apply`), one fused TF kernel per variable (`ResourceApplyKerasMomentum`, made for
    Keras' momentum rule) instead of Keras' per-variable Python: at the paper's setting the
    weight steps update ~330 variables (~1800 before the supernet's parameters were flat), and
    `apply` traced ~10 ms of ops per variable.

    The momentum slots are `optimizer.momentums` in `optimizer.build`'s order (the same list
    of variables). Options `apply` supports beyond that (clipping, EMA, accumulation, nesterov)
    raise here rather than being silently dropped.
    """
    if (optimizer.nesterov or optimizer.use_ema or optimizer.gradient_accumulation_steps
            or optimizer.clipnorm or optimizer.clipvalue or optimizer.global_clipnorm
            or optimizer.loss_scale_factor):
        raise ValueError(f"sgd_apply: optimizer {optimizer.name} has options it does not apply")
    momentums = list(optimizer.momentums) if optimizer.momentum else [None] * len(variables)
    if len(momentums) != len(variables) or any(
            m is not None and tuple(m.shape) != tuple(v.shape)
            for m, v in zip(momentums, variables)):
        raise ValueError(f"sgd_apply: {optimizer.name} was built for other variables")
    rate = tf.convert_to_tensor(optimizer.learning_rate)
    scalars = {}  # per dtype: (lr, weight decay, momentum), made once

    def scalars_of(dtype):
        if dtype not in scalars:
            scalars[dtype] = (tf.cast(rate, dtype), tf.cast(optimizer.weight_decay or 0.0, dtype),
                              tf.cast(optimizer.momentum, dtype))
        return scalars[dtype]

    for variable, momentum, grad in zip(variables, momentums, grads):
        lr, decay, mu = scalars_of(variable.dtype)
        grad = tf.cast(grad, variable.dtype)
        var = variable.value if isinstance(variable, keras.Variable) else variable
        if optimizer.weight_decay:
            var.assign_sub(var * decay * lr)
        if momentum is None:
            tf.raw_ops.ResourceApplyGradientDescent(var=var.handle, alpha=lr, delta=grad)
        else:
            tf.raw_ops.ResourceApplyKerasMomentum(var=var.handle, accum=momentum.value.handle,
                                                  lr=lr, grad=grad, momentum=mu,
                                                  use_nesterov=False)
    optimizer.iterations.assign_add(1)


def apply_if_finite(finite, updates):
    """Runs every `(optimizer, grads, variables)` / `(None, values, variables)` update iff `finite`.

    The condition is taken in cross-replica context (as Keras' LossScaleOptimizer does):
    distribution strategies allow no `tf.cond` around a `merge_call` in replica context. With
    an optimizer, its `apply`; without, the values are assigned (BatchNorm statistics).
    """
    def run_updates(grads_and_values):
        for (optimizer, _, variables), values in zip(updates, grads_and_values):
            if isinstance(optimizer, keras.optimizers.SGD):
                sgd_apply(optimizer, values, variables)
            elif optimizer is not None:
                optimizer.apply(values, variables)
            else:
                for variable, value in zip(variables, values):
                    variable.assign(value)

    payload = [values for _, values, _ in updates]

    def cross_replica(distribution, finite_value, payload_value):
        first = distribution.experimental_local_results(finite_value)[0]

        def do_apply():
            distribution.extended.call_for_each_replica(run_updates, args=(payload_value,))
            return tf.constant(True)

        return tf.cond(first, do_apply, lambda: tf.constant(False))

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(finite, payload))
