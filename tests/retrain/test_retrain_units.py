"""Unit checks of the retraining pieces against hand-computed values."""
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.ops import losses
from lbt_tf.retrain import evaluate, predict, trainer
from lbt_tf.config import TrainConfig


def test_window_starts_cover_the_image_and_end_flush():
    assert evaluate.window_starts(100, 32, 22) == [0, 22, 44, 66, 68]
    assert evaluate.window_starts(64, 64, 43) == [0]
    assert evaluate.window_starts(96, 32, 32) == [0, 32, 64]


def test_sliding_window_of_a_pixelwise_model_equals_whole_image():
    """A per-pixel model gives every window the same probabilities at a pixel, so the sliding
    mean must be exactly the whole-image softmax."""
    weights = tf.constant(np.random.default_rng(0).normal(size=(3, 5)), tf.float32)
    pixelwise = lambda x: tf.einsum("bhwc,ck->bhwk", x, weights)  # noqa: E731
    images = tf.random.stateless_normal((2, 64, 96, 3), seed=(1, 2))
    probs = evaluate.sliding_window_probabilities(pixelwise, images, (32, 64), 5)
    np.testing.assert_allclose(probs, tf.nn.softmax(pixelwise(images)).numpy(), atol=1e-6)


def test_sliding_window_rejects_window_larger_than_image():
    with pytest.raises(evaluate.ConfigError, match="crop_height"):
        evaluate.sliding_window_probabilities(lambda x: x, tf.zeros((1, 32, 32, 3)),
                                              (64, 64), 3)


def test_poly_learning_rate_matches_fasterseg_formula():
    config = TrainConfig(lr=0.02, lr_power=0.9, momentum=0.9, weight_decay=5e-4)
    optimizer = trainer.make_optimizer(config, total_steps=100)
    schedule = optimizer._learning_rate
    for step in (0, 1, 50, 99, 100):
        expected = 0.02 * (1 - step / 100) ** 0.9
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert float(optimizer.momentum) == pytest.approx(0.9)
    assert optimizer.weight_decay == pytest.approx(5e-4)


class _FixedOutputs:
    """A 'network' returning fixed logits, for checking the loss arithmetic."""

    def __init__(self, logits, aux):
        self.outputs = {"logits": logits, "aux_logits": aux}

    def __call__(self, images, training=False):
        return self.outputs


def test_retrain_loss_is_ce_plus_weighted_aux_plus_weighted_distillation():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(2, 8, 16, 4)), tf.float32)
    aux = [tf.constant(rng.normal(size=(2, 4, 8, 4)), tf.float32),
           tf.constant(rng.normal(size=(2, 2, 4, 4)), tf.float32)]
    teacher_logits = tf.constant(rng.normal(size=(2, 8, 16, 4)), tf.float32)
    labels = tf.constant(rng.integers(0, 4, size=(2, 8, 16)), tf.int32)
    model = trainer.RetrainModel(_FixedOutputs(logits, aux), ignore_label=255, aux_weight=0.4,
                                 teacher=_FixedOutputs(teacher_logits, []), distill_weight=0.5,
                                 distill_temperature=2.0)
    model.teacher = _FixedOutputs(teacher_logits, [])
    terms = model.compute_losses(model.network(None), labels, None)
    # Hand-computed CE of the full-resolution logits.
    log_probs = tf.nn.log_softmax(logits).numpy()
    onehot = np.eye(4)[labels.numpy()]
    ce = -np.mean(np.sum(onehot * log_probs, -1))
    aux_ce = sum(float(losses.segmentation_ce(a, labels, 255)) for a in aux)
    kl = float(losses.distillation_kl(logits, teacher_logits, 2.0))
    assert float(terms["ce"]) == pytest.approx(ce, rel=1e-5)
    assert float(terms["aux_ce"]) == pytest.approx(aux_ce, rel=1e-5)
    assert float(terms["distill_kl"]) == pytest.approx(kl, rel=1e-5) and kl > 0
    assert float(terms["loss"]) == pytest.approx(ce + 0.4 * aux_ce + 0.5 * kl, rel=1e-5)


def test_distillation_from_itself_adds_nothing():
    logits = tf.random.stateless_normal((1, 8, 8, 3), seed=(3, 4))
    net = _FixedOutputs(logits, [])
    model = trainer.RetrainModel(net, 255, 0.4, teacher=net, distill_weight=1.0)
    model.teacher = net
    terms = model.compute_losses(net(None), tf.zeros((1, 8, 8), tf.int32), None)
    assert abs(float(terms["distill_kl"])) < 1e-6
    assert float(terms["loss"]) == pytest.approx(float(terms["ce"]), rel=1e-6)


def test_overlay_blends_half_and_half():
    image = np.full((2, 2, 3), 100, np.uint8)
    colour = np.full((2, 2, 3), 200, np.uint8)
    np.testing.assert_array_equal(predict.overlay(image, colour), np.full((2, 2, 3), 150))


def test_format_table_lists_every_class_and_marks_absent_ones():
    table = evaluate.format_table(["road", "sky"], np.array([0.5, np.nan]), 0.5, 0.75)
    lines = table.splitlines()
    assert lines[1] == "road   0.5000"
    assert lines[2] == "sky       n/a"
    assert lines[-1] == "pixel acc  0.7500"


def test_latency_reports_the_median_of_the_timed_runs():
    import keras
    from lbt_tf.retrain import speed
    inputs = keras.Input((32, 64, 3))
    model = keras.Model(inputs, {"logits": keras.layers.Conv2D(2, 1)(inputs)})
    result = speed.measure_latency(model, (32, 64), runs=3, warmup=1)
    assert result["input"] == "32x64" and result["runs"] == 3
    assert result["latency_ms"] > 0
    assert result["fps"] == pytest.approx(1000.0 / result["latency_ms"])
    with pytest.raises(evaluate.ConfigError, match="--latency_runs"):
        speed.measure_latency(model, (32, 64), runs=0)
