"""The student's `stateless_call` is twice differentiable: the gradient of a validation loss after
a virtual SGD step on soft pseudo-labels, w.r.t. the pseudo-label logits, matches central finite
differences (tiny variant, float64, BatchNorm and dropout in training mode)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.config import StudentConfig
from lbt_tf.models.deeplab import build_student
from lbt_tf.ops import losses

TINY = StudentConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8, aspp_channels=16)
H, W, C = 32, 64, 3


@pytest.fixture
def float64_model(keras_float64):
    keras.utils.set_random_seed(3)
    model = build_student(TINY, C, (H, W, 3))
    assert all(v.dtype == "float64" for v in model.weights)
    return model


def test_hypergradient_through_student_step_matches_finite_differences(float64_model):
    model = float64_model
    rng = np.random.default_rng(0)
    train_images = tf.constant(rng.normal(size=(2, H, W, 3)))
    val_images = tf.constant(rng.normal(size=(2, H, W, 3)))
    val_labels = tf.constant(rng.integers(0, C, size=(2, H, W)), tf.int32)
    # The "teacher" output the hypergradient is taken w.r.t.: pseudo-label logits at 1/8 size.
    teacher_logits = tf.constant(rng.normal(size=(2, H // 8, W // 8, C)))
    direction = tf.constant(rng.normal(size=teacher_logits.shape))
    weights = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    states = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    step_size = 0.05

    def val_loss_after_step(pseudo_logits):
        with tf.GradientTape() as inner:
            inner.watch(weights)
            outputs, new_states = model.stateless_call(weights, states, train_images,
                                                       training=True)
            targets = tf.nn.softmax(pseudo_logits)
            train_loss = (losses.soft_ce(outputs["logits"], targets)
                          + 0.4 * losses.soft_ce(outputs["aux_logits"], targets))
        grads = inner.gradient(train_loss, weights)
        assert all(g is not None for g in grads)
        stepped = [w - step_size * g for w, g in zip(weights, grads)]
        val_outputs, _ = model.stateless_call(stepped, new_states, val_images, training=True)
        return losses.segmentation_ce(val_outputs["logits"], val_labels, ignore_label=255)

    with tf.GradientTape() as outer:
        outer.watch(teacher_logits)
        loss = val_loss_after_step(teacher_logits)
    hypergrad = outer.gradient(loss, teacher_logits)
    assert hypergrad is not None
    analytic = float(tf.reduce_sum(hypergrad * direction))

    # float64; the unrolled loss is strongly curved (BN over 2 images), so a small step.
    eps = 1e-5
    numeric = float((val_loss_after_step(teacher_logits + eps * direction)
                     - val_loss_after_step(teacher_logits - eps * direction)) / (2 * eps))
    assert abs(analytic) > 1e-8  # the student step really depends on the pseudo-labels
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-10)
