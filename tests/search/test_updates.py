"""The search's weight-step pieces equal what they replace: `sgd_apply` (TF's fused Keras-momentum
kernel) = Keras SGD's `apply`; `norm_finite` flags NaN, inf and an overflowing norm."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.search.updates import norm_finite, sgd_apply


def _run_sgd(fused, momentum, weight_decay, strategy):
    rng = np.random.default_rng(0)
    with strategy.scope():
        variables = [keras.Variable(rng.normal(size=shape).astype("float32"))
                     for shape in [(3, 4), (5,)]]
        optimizer = keras.optimizers.SGD(0.1, momentum=momentum, weight_decay=weight_decay)
        optimizer.build(variables)
    steps = [[tf.constant(rng.normal(size=v.shape).astype("float32")) for v in variables]
             for _ in range(3)]

    @tf.function
    def step(grads):
        if fused:
            strategy.run(lambda g: sgd_apply(optimizer, g, variables), args=(grads,))
        else:
            optimizer.apply(grads, variables)

    for grads in steps:
        step(grads)
    return [v.numpy() for v in variables], int(optimizer.iterations.numpy())


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 5e-4), (0.0, None)])
def test_sgd_apply_equals_keras_sgd(momentum, weight_decay):
    expected, expected_steps = _run_sgd(False, momentum, weight_decay, tf.distribute.get_strategy())
    for strategy in (tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["CPU:0"])):
        got, steps = _run_sgd(True, momentum, weight_decay, strategy)
        assert steps == expected_steps == 3
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=1e-6, atol=1e-7)


def test_sgd_apply_refuses_options_it_does_not_apply():
    variable = keras.Variable(np.zeros(2, np.float32))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True)
    optimizer.build([variable])
    with pytest.raises(ValueError, match="options"):
        sgd_apply(optimizer, [tf.ones(2)], [variable])


def test_norm_finite():
    ones = [tf.ones(3), tf.ones((2, 2)), tf.constant([1, 2], tf.int64)]
    assert bool(norm_finite(ones))
    assert not bool(norm_finite(ones + [tf.constant([1.0, np.nan])]))
    assert not bool(norm_finite(ones + [tf.constant([np.inf])]))
    assert not bool(norm_finite([tf.constant([3e30, 3e30])]))  # squares overflow float32
