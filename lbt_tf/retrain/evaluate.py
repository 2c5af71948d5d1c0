"""`--mode=evaluate`: mIoU, per-class IoU and pixel accuracy of the retrained network on a split,
a confusion-matrix PNG, an image / ground truth / prediction grid, and inference speed (with the
DeepLabV3 student at the same size for comparison). Everything goes to `<run_dir>/evaluate/`.
"""
from __future__ import annotations

import json
import math
import os
from typing import Callable, List, Tuple

import numpy as np
import tensorflow as tf

from lbt_tf.names import EVAL_SPLITS
from lbt_tf.config import Config, ConfigError
from lbt_tf.retrain import network as network_lib
from lbt_tf.retrain import speed


def eval_source(config: Config, split: str):
    """The `Source` named by `--eval_split`: val, test, train, or an LBT part (teacher_val, ...)."""
    from lbt_tf import data as data_lib
    splits = data_lib.make_splits(config.data, config.seed)
    source = getattr(splits, split, None)
    if source is None:
        known = [n for n in EVAL_SPLITS if getattr(splits, n, None)]
        raise ConfigError(f"--eval_split={split!r}: expected one of {', '.join(known)}")
    if not getattr(source, "labeled", True):
        raise ConfigError(f"--eval_split={split!r} has no labels to evaluate against")
    return source


def window_starts(size: int, window: int, stride: int) -> List[int]:
    """Window offsets covering [0, size): every `stride`, plus one flush with the end."""
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window_probabilities(predict_logits: Callable, images, window_hw: Tuple[int, int],
                                 num_classes: int, overlap: float = 1.0 / 3):
    """Mean softmax over overlapping windows of the network's input size (FasterSeg's sliding
    evaluation). `predict_logits` maps [B, wh, ww, 3] to logits [B, wh, ww, C]."""
    images = tf.convert_to_tensor(images)
    batch, height, width = images.shape[0], images.shape[1], images.shape[2]
    win_h, win_w = window_hw
    if win_h > height or win_w > width:
        raise ConfigError(f"sliding evaluation: window {win_h}x{win_w} (--crop_height/"
                          f"--crop_width) is larger than the image {height}x{width}")
    stride_h = max(1, math.ceil(win_h * (1 - overlap)))
    stride_w = max(1, math.ceil(win_w * (1 - overlap)))
    summed = np.zeros((batch, height, width, num_classes), np.float32)
    counts = np.zeros((1, height, width, 1), np.float32)
    for top in window_starts(height, win_h, stride_h):
        for left in window_starts(width, win_w, stride_w):
            window = images[:, top:top + win_h, left:left + win_w, :]
            probs = tf.nn.softmax(predict_logits(window), axis=-1).numpy()
            summed[:, top:top + win_h, left:left + win_w, :] += probs
            counts[:, top:top + win_h, left:left + win_w, :] += 1.0
    return summed / counts


def class_names(num_classes: int) -> List[str]:
    from lbt_tf.data import TRAIN_ID_NAMES
    names = list(TRAIN_ID_NAMES)
    return names if len(names) == num_classes else [f"class_{i}" for i in range(num_classes)]


def format_table(names, per_class_iou, miou, pixel_accuracy) -> str:
    width = max(len(n) for n in names + ["class"])
    lines = [f"{'class':<{width}}  IoU"]
    for name, iou in zip(names, per_class_iou):
        lines.append(f"{name:<{width}}  {'   n/a' if np.isnan(iou) else f'{iou:6.4f}'}")
    lines.append(f"{'mIoU':<{width}}  {miou:6.4f}")
    lines.append(f"{'pixel acc':<{width}}  {pixel_accuracy:6.4f}")
    return "\n".join(lines)


def save_confusion_png(path: str, confusion: np.ndarray, names: List[str]):
    """Row-normalised confusion matrix (rows: ground truth, columns: prediction)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    confusion = np.asarray(confusion, np.float64)
    normalised = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1.0)
    size = max(4.0, 0.4 * len(names))
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class Evaluator:
    """Runs the trained network on a split, whole-image or sliding-window."""

    def __init__(self, config: Config):
        self.config = config
        data = config.data
        self.mode = config.eval.mode
        self.image_hw = (data.image_height, data.image_width)
        self.window_hw = (data.crop_height, data.crop_width) if self.mode == "sliding" \
            else self.image_hw
        self.model, self.arch = network_lib.load_trained_network(config, self.window_hw)
        self._logits = tf.function(
            lambda x: network_lib.logits_of(self.model(x, training=False)))

    def predict(self, images) -> np.ndarray:
        """int32 label maps [B, H, W] of normalised images [B, H, W, 3]."""
        images = tf.convert_to_tensor(images, tf.float32)
        if self.mode == "sliding":
            probs = sliding_window_probabilities(self._logits, images, self.window_hw,
                                                 self.config.data.num_classes)
            return np.argmax(probs, axis=-1).astype(np.int32)
        if tuple(images.shape[1:3]) != self.window_hw:
            raise ConfigError(f"images are {images.shape[1]}x{images.shape[2]}, the network "
                              f"takes {self.window_hw[0]}x{self.window_hw[1]} (--image_height/"
                              "--image_width)")
        return tf.argmax(self._logits(images), axis=-1, output_type=tf.int32).numpy()


def evaluate_split(config: Config, evaluator: Evaluator, source, grid_images: int = 0):
    """Streams the split through the evaluator; returns (metric, grid_samples)."""
    from lbt_tf import data as data_lib
    from lbt_tf.metrics import StreamingMeanIoU
    metric = StreamingMeanIoU(config.data.num_classes, config.data.ignore_label)
    samples = []
    for images, labels in data_lib.make_dataset(config.data, source, training=False):
        predictions = evaluator.predict(images)
        metric.update_state(labels, predictions)
        for i in range(min(images.shape[0], grid_images - len(samples))):
            samples.append((images[i:i + 1], labels[i].numpy(), predictions[i]))
    return metric, samples


def _save_prediction_grid(config: Config, path: str, samples):
    from lbt_tf import data as data_lib
    from lbt_tf.data import visualize
    rows = [[data_lib.denormalize(image, config.data)[0].numpy(), visualize.colorize(label),
             visualize.colorize(prediction)] for image, label, prediction in samples]
    visualize.save_grid(path, rows, ["image", "ground truth", "prediction"])


def run_evaluate(config: Config) -> dict:
    """Evaluates `<run_dir>/train/` on `--eval_split`; prints the table, returns the results."""
    e = config.eval
    out_dir = os.path.join(config.run_dir, "evaluate")
    os.makedirs(out_dir, exist_ok=True)
    source = eval_source(config, e.split)  # files are checked before the network is built
    evaluator = Evaluator(config)
    metric, samples = evaluate_split(config, evaluator, source, grid_images=e.grid_images)
    names = class_names(config.data.num_classes)
    per_class = np.asarray(metric.per_class_iou(), np.float64)
    miou = float(metric.result())
    pixel_accuracy = float(metric.pixel_accuracy())
    confusion = np.asarray(metric.confusion_matrix())
    save_confusion_png(os.path.join(out_dir, "confusion_matrix.png"), confusion, names)
    if samples:
        _save_prediction_grid(config, os.path.join(out_dir, "predictions.png"), samples)

    speed_hw = evaluator.image_hw
    timing_model = evaluator.model if evaluator.window_hw == speed_hw else \
        network_lib.load_trained_network(config, speed_hw)[0]
    results = {"split": e.split, "mode": e.mode, "miou": miou, "pixel_accuracy": pixel_accuracy,
               "per_class_iou": {n: (None if np.isnan(v) else float(v))
                                 for n, v in zip(names, per_class)},
               "confusion_matrix": confusion.astype(np.int64).tolist(),
               "speed": speed.measure_latency(timing_model, speed_hw, e.latency_runs,
                                              e.latency_warmup)}
    if e.compare_student:
        from lbt_tf.models import deeplab
        student = deeplab.build_student(config.student, config.data.num_classes,
                                        (*speed_hw, 3))
        results["student_speed"] = speed.measure_latency(student, speed_hw, e.latency_runs,
                                                         e.latency_warmup)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
        json.dump(results, f, indent=2)

    print(f"== {e.split} split, {e.mode} evaluation ==")
    print(format_table(names, per_class, miou, pixel_accuracy))
    s = results["speed"]
    print(f"network: latency_ms={s['latency_ms']:.2f} fps={s['fps']:.1f} at {s['input']}")
    if "student_speed" in results:
        s = results["student_speed"]
        print(f"deeplabv3 student: latency_ms={s['latency_ms']:.2f} fps={s['fps']:.1f} "
              f"at {s['input']}")
    print(f"miou={miou:.4f} pixel_accuracy={pixel_accuracy:.4f} results={out_dir}")
    return results
