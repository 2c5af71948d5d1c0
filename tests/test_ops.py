"""The twice-differentiable resize and the written-out soft CE, against TF and finite differences."""
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.ops import losses, resize


@pytest.mark.parametrize("in_hw,out_hw", [((4, 8), (8, 16)), ((8, 16), (4, 8)), ((5, 7), (9, 3))])
def test_resize_bilinear_matches_tf(in_hw, out_hw):
    x = tf.random.stateless_normal((2, *in_hw, 3), seed=(1, 2))
    ours = resize.resize_bilinear(x, out_hw)
    theirs = tf.image.resize(x, out_hw, method="bilinear")
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def test_resize_align_corners_keeps_corners():
    x = tf.random.stateless_normal((1, 4, 6, 2), seed=(3, 4))
    y = resize.resize_bilinear(x, (7, 11), align_corners=True)
    for (i, j), (k, l) in [((0, 0), (0, 0)), ((3, 5), (6, 10)), ((0, 5), (0, 10))]:
        np.testing.assert_allclose(x[0, i, j].numpy(), y[0, k, l].numpy(), atol=1e-6)


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize("in_hw,out_hw", [((4, 8), (32, 64)), ((8, 16), (4, 8)), ((5, 7), (9, 3))])
def test_tf_kernel_resize_equals_the_twice_differentiable_one(in_hw, out_hw, align_corners):
    """The derived network's resize (TF's kernel) computes what the supernet's einsum does."""
    x = tf.random.stateless_normal((1, *in_hw, 3), seed=(5, 6))
    einsum = resize.resize_bilinear(x, out_hw, align_corners)
    kernel = resize.resize_bilinear(x, out_hw, align_corners, twice_differentiable=False)
    assert "Einsum" not in str(tf.function(lambda t: resize.resize_bilinear(
        t, out_hw, align_corners, twice_differentiable=False)).get_concrete_function(x).graph
        .as_graph_def())
    np.testing.assert_allclose(kernel.numpy(), einsum.numpy(), atol=1e-5)


def test_downsample_labels_nearest_matches_tf():
    labels = tf.random.stateless_uniform((2, 16, 32), seed=(5, 6), maxval=19, dtype=tf.int32)
    ours = resize.downsample_labels_nearest(labels, (2, 4))
    theirs = tf.image.resize(labels[..., None], (2, 4), method="nearest")[..., 0]
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def _hypergradient(resize_fn, ce_fn):
    """d L_val(S') / d a with S' = S - xi * grad_S L(S; softmax(up(logits + a)))."""
    x = tf.constant(np.random.RandomState(0).randn(1, 4, 4, 2), tf.float64)
    s = tf.Variable(np.random.RandomState(1).randn(2, 3) * 0.5)
    a = tf.Variable(np.random.RandomState(2).randn(1, 2, 2, 3) * 0.5)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            target = tf.nn.softmax(resize_fn(a, (4, 4)), -1)
            student_logits = tf.einsum("bhwc,ck->bhwk", x, s)
            inner_loss = ce_fn(student_logits, target)
        s_prime = s - 0.5 * inner.gradient(inner_loss, s)
        val = tf.reduce_sum(tf.einsum("bhwc,ck->bhwk", x, s_prime) ** 2)
    return outer.gradient(val, a), (x, s, a)


def test_second_order_path_through_resize_and_soft_ce_matches_finite_differences():
    grad, (x, s, a) = _hypergradient(resize.resize_bilinear, losses.soft_ce)
    assert grad is not None

    def objective(a_value):
        with tf.GradientTape() as inner:
            inner.watch(s)
            target = tf.nn.softmax(resize.resize_bilinear(a_value, (4, 4)), -1)
            inner_loss = losses.soft_ce(tf.einsum("bhwc,ck->bhwk", x, s), target)
        s_prime = s - 0.5 * inner.gradient(inner_loss, s)
        return float(tf.reduce_sum(tf.einsum("bhwc,ck->bhwk", x, s_prime) ** 2))

    a0 = a.numpy()
    numeric = np.zeros_like(a0)
    eps = 1e-6
    for idx in np.ndindex(a0.shape):
        plus, minus = a0.copy(), a0.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (objective(tf.constant(plus)) - objective(tf.constant(minus))) / (2 * eps)
    np.testing.assert_allclose(grad.numpy(), numeric, rtol=1e-6, atol=1e-9)
    assert np.abs(numeric).max() > 1e-4  # the path is real, not trivially zero


def test_segmentation_ce_ignores_label_and_handles_all_ignored():
    logits = tf.constant(np.random.RandomState(0).randn(1, 2, 2, 3), tf.float32)
    labels = tf.constant([[[0, 255], [2, 1]]])
    loss = losses.segmentation_ce(logits, labels, ignore_label=255)
    manual = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=[0, 2, 1], logits=tf.gather_nd(logits[0], [[0, 0], [1, 0], [1, 1]]))
    np.testing.assert_allclose(loss.numpy(), tf.reduce_mean(manual).numpy(), rtol=1e-6)
    all_ignored = losses.segmentation_ce(logits, tf.fill((1, 2, 2), 255), ignore_label=255)
    assert float(all_ignored) == 0.0


def test_segmentation_ce_downsamples_labels_to_logits():
    logits = tf.zeros((1, 2, 2, 4))
    labels = tf.fill((1, 16, 16), 3)
    np.testing.assert_allclose(losses.segmentation_ce(logits, labels, 255).numpy(), np.log(4.0),
                               rtol=1e-6)
