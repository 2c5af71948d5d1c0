"""Applying updates safely: replica means, the finite check, and `apply_if_finite` (shared by the
architecture step in unrolled.py and the weight steps in lbt_model.py)."""
from __future__ import annotations

import tensorflow as tf


def all_finite(tensors):
    checks = [tf.reduce_all(tf.math.is_finite(t)) for t in tensors if t.dtype.is_floating]
    return tf.reduce_all(tf.stack(checks)) if checks else tf.constant(True)


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


def apply_if_finite(finite, updates):
    """Runs every `(optimizer, grads, variables)` / `(None, values, variables)` update iff `finite`.

    The condition is taken in cross-replica context (as Keras' LossScaleOptimizer does):
    distribution strategies allow no `tf.cond` around a `merge_call` in replica context. With
    an optimizer, its `apply`; without, the values are assigned (BatchNorm statistics).
    """
    def run_updates(grads_and_values):
        for (optimizer, _, variables), values in zip(updates, grads_and_values):
            if optimizer is not None:
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
