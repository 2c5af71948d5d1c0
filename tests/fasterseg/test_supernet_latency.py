"""Supernet forward/gradients (incl. stateless_call, second order) and its expected latency."""
import json
import zlib

import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.models.fasterseg import build_supernet, latency as latency_lib
from lbt_tf.models.fasterseg.latency_table import OpSpec
from lbt_tf.models.fasterseg.operations import num_filters
from lbt_tf.models.fasterseg.space import OP_TABLE_NAMES
from lbt_tf.models.fasterseg.supernet import FasterSegSupernet
from lbt_tf.ops.losses import segmentation_ce
from tests.fasterseg.conftest import tiny_config


def synthetic_table(config):
    """Deterministic pseudo-random ms for every op configuration of the supernet."""
    d = config.data
    specs = latency_lib.supernet_specs(config.teacher, d.image_height, d.image_width, d.num_classes)
    return {s.key: 0.1 + (zlib.crc32(s.key.encode()) % 1000) / 100.0 for s in specs}


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    supernet = build_supernet(config, latency_table=synthetic_table(config))
    supernet.sample_widths = False
    return config, supernet


def _loss(supernet, images, labels, **kw):
    return tf.add_n([segmentation_ce(l, labels, 255) for l in supernet(images, **kw)])


def test_supernet_shapes_and_variable_groups(tiny):
    config, supernet = tiny
    for height, width in [(32, 64), (64, 32), (64, 96)]:
        net = FasterSegSupernet(config.teacher, 3, (height, width))
        outputs = net(np.random.rand(2, height, width, 3).astype("float32"), training=True)
        assert len(outputs) == 5
        assert all(o.shape == (2, height // 8, width // 8, 3) for o in outputs)
    names = [v.name for v in supernet.arch_variables]
    assert names == ["alpha_0", "alpha_1", "alpha_2", "beta_1", "beta_2",
                     "gamma_0", "gamma_1", "gamma_2"]
    L = config.teacher.layers
    assert [tuple(v.shape) for v in supernet.arch_variables] == [
        (L, 5), (L - 1, 5), (L - 2, 5), (L - 2, 2), (L - 3, 2), (L - 1, 5), (L - 1, 5), (L - 2, 5)]
    arch_ids = {id(v) for v in supernet.arch_variables}
    assert not arch_ids & {id(v) for v in supernet.weight_variables}
    assert len(supernet.weight_variables) + len(arch_ids) == len(supernet.trainable_variables)


@pytest.mark.parametrize("sample_widths", [False, True])
def test_gradient_reaches_every_arch_entry(tiny, sample_widths):
    config, supernet = tiny
    supernet.sample_widths = sample_widths
    rng = np.random.default_rng(1)
    images = rng.random((2, 32, 64, 3), dtype=np.float32)
    labels = rng.integers(0, 3, (2, 32, 64))
    with tf.GradientTape() as tape:
        loss = _loss(supernet, images, labels, training=True)
    grads = tape.gradient(loss, supernet.arch_variables)
    supernet.sample_widths = False
    for variable, grad in zip(supernet.arch_variables, grads):
        assert grad is not None, variable.name
        grad = grad.numpy()
        assert np.all(np.isfinite(grad)), variable.name
        assert np.all(np.abs(grad).sum(axis=-1) > 0), f"{variable.name} has a row without gradient"


@pytest.fixture
def float64_supernet(keras_float64):
    """A float64 tiny supernet (float32 rounding would swamp eps=1e-7 differences)."""
    import keras
    keras.utils.set_random_seed(0)
    config = tiny_config()
    supernet = build_supernet(config, latency_table=synthetic_table(config))
    supernet.sample_widths = False
    return config, supernet


def test_stateless_second_order_matches_finite_differences(float64_supernet, monkeypatch):
    """d L(W - xi * dL/dW (A), A) / dA through stateless_call, against central differences.

    ReLU is swapped for a smooth softplus: the inner gradient contains relu'(z), a step, so the
    unrolled loss jumps wherever a pre-activation crosses zero and differences of it do not
    converge; relu'' = 0 almost everywhere, so no second-order path is hidden by the swap.
    Guards operations.BatchNorm: Keras' own batch moments give a wrong Hessian (16% off here).
    """
    monkeypatch.setattr(tf.nn, "relu", lambda x, name=None: tf.nn.softplus(4.0 * x) / 4.0)
    config, supernet = float64_supernet
    xi = 0.01
    rng = np.random.default_rng(2)
    images = rng.random((2, 32, 64, 3))
    labels = rng.integers(0, 3, (2, 32, 64))
    arch_ids = [id(v) for v in supernet.arch_variables]
    trainable = [tf.convert_to_tensor(v.value) for v in supernet.trainable_variables]
    non_trainable = [tf.convert_to_tensor(v.value) for v in supernet.non_trainable_variables]
    arch_pos = [i for i, v in enumerate(supernet.trainable_variables) if id(v) in arch_ids]
    weight_pos = [i for i in range(len(trainable)) if i not in arch_pos]

    def loss_at(values):
        logits, _ = supernet.stateless_call(values, non_trainable, images, training=True)
        return tf.add_n([segmentation_ce(l, labels, 255) for l in logits])

    def unrolled_loss(arch_values, second_order=True):
        values = list(trainable)
        for pos, value in zip(arch_pos, arch_values):
            values[pos] = value
        with tf.GradientTape() as inner:
            weights = [values[p] for p in weight_pos]
            inner.watch(weights)
            loss = loss_at(values)
        grads = inner.gradient(loss, weights)
        for p, w, g in zip(weight_pos, weights, grads):
            values[p] = w - xi * (g if second_order else tf.stop_gradient(g))
        return loss_at(values)

    arch_values = [tf.convert_to_tensor(trainable[p]) + rng.normal(size=trainable[p].shape) * 0.5
                   for p in arch_pos]
    direction = [tf.constant(rng.normal(size=a.shape)) for a in arch_values]

    def directional_gradient(second_order):
        with tf.GradientTape() as outer:
            outer.watch(arch_values)
            loss = unrolled_loss(arch_values, second_order)
        grads = outer.gradient(loss, arch_values)
        assert all(g is not None for g in grads)
        return sum(float(tf.reduce_sum(g * d)) for g, d in zip(grads, direction))

    analytic = directional_gradient(second_order=True)
    eps = 1e-7
    plus = unrolled_loss([a + eps * d for a, d in zip(arch_values, direction)])
    minus = unrolled_loss([a - eps * d for a, d in zip(arch_values, direction)])
    numeric = float(plus - minus) / (2 * eps)
    assert analytic == pytest.approx(numeric, rel=1e-4)
    # the second-order term matters here, so the comparison above checks it
    assert abs(directional_gradient(second_order=False) - analytic) > 0.01 * abs(analytic)


def test_gumbel_noise_is_reproducible_under_stateless_call(tiny):
    config, supernet = tiny
    supernet.sample_widths = True
    images = np.random.default_rng(3).random((1, 32, 64, 3), dtype=np.float32)
    trainable = [v.value for v in supernet.trainable_variables]
    non_trainable = [v.value for v in supernet.non_trainable_variables]
    out_a, state_a = supernet.stateless_call(trainable, non_trainable, images, training=False)
    out_b, _ = supernet.stateless_call(trainable, non_trainable, images, training=False)
    out_c, _ = supernet.stateless_call(trainable, state_a, images, training=False)
    supernet.sample_widths = False
    np.testing.assert_allclose(out_a[0], out_b[0])
    seed_index = [i for i, v in enumerate(supernet.non_trainable_variables) if "seed" in v.path]
    assert seed_index and not np.array_equal(state_a[seed_index[0]], non_trainable[seed_index[0]])
    assert not np.allclose(out_a[0], out_c[0])   # advanced state: new widths sampled


def test_expected_latency_one_hot_equals_table_sum(tiny):
    config, supernet = tiny
    table = synthetic_table(config)
    L = config.teacher.layers
    rng = np.random.default_rng(4)
    big = 60.0
    choice = {name: rng.integers(0, v.shape[1], v.shape[0]) for name, v in
              zip(supernet.arch_variable_names, supernet.arch_variables)}
    values = [tf.constant(np.eye(v.shape[1])[choice[n]] * big, tf.float32)
              for n, v in zip(supernet.arch_variable_names, supernet.arch_variables)]
    predicted = float(supernet.expected_latency(values))

    # hand computation: stem + the ops on the three chosen paths
    tc, d = config.teacher, config.data
    widths = tc.width_mult_list
    F, (stem_r, head_r) = tc.base_width, tc.stem_head_width
    ops = OP_TABLE_NAMES

    def ratio(layer, scale):
        if layer < 0:
            return stem_r
        if layer == L - 1:
            return head_r
        return widths[choice[f"gamma_{scale}"][layer - 1 if scale == 2 else layer]]

    def op_ms(layer, scale, stride):
        h, w = d.image_height // (8 * 2 ** scale), d.image_width // (8 * 2 ** scale)
        spec = OpSpec(
            ops[choice[f"alpha_{scale}"][layer - scale]], h, w,
            num_filters(F, 8 * 2 ** scale, ratio(layer - 1, scale)),
            num_filters(F, 8 * 2 ** scale * stride, ratio(layer, scale + stride - 1)),
            stride)
        return table[spec.key]

    total = sum(table[s.key] for s in latency_lib.stem_specs(F, d.image_height, d.image_width, stem_r))
    for end in range(3):
        # walk back from (L - 1, end): cell (i, j)'s input comes from "down" (beta col 0)
        scale, cost = end, op_ms(L - 1, end, 1)
        for i in range(L - 1, 0, -1):
            if scale == 0:
                from_down = False
            elif i == scale:
                from_down = True
            else:
                from_down = choice[f"beta_{scale}"][i - scale - 1] == 0
            if from_down:
                scale -= 1
                cost += op_ms(i - 1, scale, 2)
            else:
                cost += op_ms(i - 1, scale, 1)
        total += cost
    assert predicted == pytest.approx(total, rel=1e-5)


def test_expected_latency_gradient_finite_nonzero(tiny):
    config, supernet = tiny
    values = [tf.convert_to_tensor(v.value) + tf.random.normal(v.shape, seed=5)
              for v in supernet.arch_variables]
    with tf.GradientTape() as tape:
        tape.watch(values)
        latency = supernet.expected_latency(values)
    grads = tape.gradient(latency, values)
    assert float(latency) > 0
    for name, grad in zip(supernet.arch_variable_names, grads):
        assert grad is not None and np.all(np.isfinite(grad.numpy())), name
        assert np.any(grad.numpy() != 0), name
