"""StreamingMeanIoU against confusion matrices and IoUs computed by hand."""
import numpy as np
import pytest

from lbt_tf.metrics import StreamingMeanIoU


def test_hand_computed_case_with_ignore():
    metric = StreamingMeanIoU(num_classes=3, ignore_label=255)
    labels = np.array([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    predictions = np.array([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    metric.update_state(labels, predictions)
    # Rows label, cols prediction: 0->{0,1}, 1->{1,1}, 2->{2,0}; ignore pixels skipped.
    np.testing.assert_array_equal(metric.confusion_matrix(),
                                  [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    # IoU = TP / (row + col - TP): class0 1/(2+2-1)=1/3, class1 2/(2+3-2)=2/3, class2 1/(2+1-1)=1/2
    np.testing.assert_allclose(metric.per_class_iou(), [1 / 3, 2 / 3, 1 / 2])
    assert metric.result().numpy() == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3, rel=1e-6)
    assert metric.pixel_accuracy() == pytest.approx(4 / 6)


def test_logits_and_absent_classes():
    metric = StreamingMeanIoU(num_classes=4, ignore_label=255)
    labels = np.array([[[0, 1], [1, 255]]])
    logits = np.zeros((1, 2, 2, 4), np.float32)
    logits[0, 0, 0, 0] = logits[0, 0, 1, 1] = logits[0, 1, 0, 0] = logits[0, 1, 1, 3] = 5.0
    metric.update_state(labels, logits)
    iou = metric.per_class_iou()
    # class0: TP1, label 1, pred 2 -> 1/2; class1: TP1, label 2, pred 1 -> 1/2;
    # class2 never occurs -> NaN; class3 predicted only on an ignore pixel -> NaN (skipped).
    np.testing.assert_allclose(iou[:2], [0.5, 0.5])
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert metric.result().numpy() == pytest.approx(0.5)


def test_accumulates_over_updates_and_resets():
    metric = StreamingMeanIoU(num_classes=2)
    metric.update_state(np.array([[[0, 0]]]), np.array([[[0, 0]]]))
    assert metric.result().numpy() == pytest.approx(1.0)  # only class 0 present
    metric.update_state(np.array([[[1, 1]]]), np.array([[[0, 1]]]))
    # Totals: [[2, 0], [1, 1]] -> class0 2/3, class1 1/2.
    np.testing.assert_array_equal(metric.confusion_matrix(), [[2, 0], [1, 1]])
    assert metric.result().numpy() == pytest.approx((2 / 3 + 1 / 2) / 2, rel=1e-6)
    metric.reset_state()
    assert metric.confusion_matrix().sum() == 0 and metric.result().numpy() == 0.0


def test_matches_numpy_on_random_maps():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 6, (3, 8, 16))
    labels[rng.random(labels.shape) < 0.1] = 255
    predictions = rng.integers(0, 5, (3, 8, 16))
    metric = StreamingMeanIoU(num_classes=5)
    for i in range(3):
        metric.update_state(labels[i:i + 1], predictions[i:i + 1])
    valid = labels < 5  # label 5 is outside num_classes: skipped like ignore
    confusion = np.zeros((5, 5))
    np.add.at(confusion, (labels[valid], predictions[valid]), 1)
    np.testing.assert_array_equal(metric.confusion_matrix(), confusion)
    tp = np.diag(confusion)
    iou = tp / (confusion.sum(0) + confusion.sum(1) - tp)
    assert metric.result().numpy() == pytest.approx(iou.mean(), rel=1e-6)


def test_smaller_logits_are_upsampled_to_labels():
    metric = StreamingMeanIoU(num_classes=2)
    logits = np.zeros((1, 2, 2, 2), np.float32)
    logits[..., 1] = 1.0  # class 1 everywhere
    metric.update_state(np.ones((1, 4, 4), np.int32), logits)
    assert metric.confusion_matrix()[1, 1] == 16
