"""Student benchmark: parameter parity with torchvision and train-step / inference time of the
full DeepLabV3-ResNet50 beside FasterSeg's derived network.

    python bench/student.py [--height 256 --width 512 --runs 5 --fasterseg_arch PATH]

Prints `student_trainable_params=<N>` for torchvision's setting (21 classes, auxiliary head;
torchvision: 42004074), then one line per network with median train-step and inference times
at batch 1 on this machine, and the ratios.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from lbt_tf.config import StudentConfig  # noqa: E402
from lbt_tf.models.deeplab import build_student, count_trainable_params  # noqa: E402

TORCHVISION_PARAMS = 42_004_074  # deeplabv3_resnet50(num_classes=21, aux_loss=True)


def _all_logits(outputs):
    """(main logits, [auxiliary logits]) of a model returning a dict, a list or one tensor."""
    if isinstance(outputs, dict):
        main_key = "logits" if "logits" in outputs else next(iter(outputs))
        auxiliary = []
        for key, value in outputs.items():
            if key != main_key:  # the derived FasterSeg network returns a list of aux logits
                auxiliary.extend(value if isinstance(value, (list, tuple)) else [value])
        return outputs[main_key], auxiliary
    if isinstance(outputs, (list, tuple)):
        return outputs[0], list(outputs[1:])
    return outputs, []


def _pixel_ce(logits, labels):
    if logits.shape[1:3] != labels.shape[1:3]:
        logits = tf.image.resize(logits, labels.shape[1:3])  # bench only: first order suffices
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels,
                                                                         logits=logits))


def time_model(model, height, width, num_classes, runs, warmup):
    """Median seconds of one SGD train step (all heads) and one inference pass (main output
    only), batch 1, in tf.function."""
    images = tf.random.normal((1, height, width, 3))
    labels = tf.random.uniform((1, height, width), maxval=num_classes, dtype=tf.int32)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    optimizer.build(model.trainable_variables)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            main, auxiliary = _all_logits(model(images, training=True))
            # Training as in retraining: auxiliary heads weighted 0.4 (TrainConfig.aux_weight).
            loss = _pixel_ce(main, labels) + sum(0.4 * _pixel_ce(a, labels) for a in auxiliary)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    @tf.function
    def infer():
        return _all_logits(model(images, training=False))[0]

    def median_seconds(fn):
        for _ in range(warmup):
            fn().numpy()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn().numpy()  # .numpy() waits for the device
            times.append(time.perf_counter() - start)
        return float(np.median(times))

    return median_seconds(train_step), median_seconds(infer)


def build_fasterseg(arch_path, num_classes, input_shape):
    """FasterSeg's derived network (another module); None with a reason when unavailable."""
    try:
        from lbt_tf.models.fasterseg import build_derived_network, import_fasterseg
        arch = import_fasterseg(arch_path)
        return build_derived_network(arch, num_classes, input_shape), None
    except Exception as error:  # noqa: BLE001  any failure: report and bench the student alone
        return None, f"{type(error).__name__}: {error}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--num_classes", type=int, default=19)
    parser.add_argument("--output_stride", type=int, default=8, choices=(8, 16))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--fasterseg_arch", default="/work/shared/fasterseg/arch_0.json")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    parity_model = build_student(StudentConfig(aux_head=True), 21, (64, 64, 3))
    build_seconds = time.perf_counter() - start
    params = count_trainable_params(parity_model)
    print(f"student_trainable_params={params}")
    print(f"torchvision_deeplabv3_resnet50_params={TORCHVISION_PARAMS} "
          f"match={params == TORCHVISION_PARAMS} build_seconds={build_seconds:.1f}")
    del parity_model

    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    input_shape = (args.height, args.width, 3)
    print(f"device={device} input={args.height}x{args.width} batch=1 runs={args.runs}")
    student = build_student(StudentConfig(output_stride=args.output_stride),
                            args.num_classes, input_shape)
    student_train, student_infer = time_model(student, args.height, args.width,
                                              args.num_classes, args.runs, args.warmup)
    print(f"deeplabv3_resnet50: params={count_trainable_params(student)} "
          f"train_step_ms={1e3 * student_train:.1f} inference_ms={1e3 * student_infer:.1f}")

    fasterseg, reason = build_fasterseg(args.fasterseg_arch, args.num_classes, input_shape)
    if fasterseg is None:
        print(f"fasterseg: unavailable ({reason})")
        return
    teacher_train, teacher_infer = time_model(fasterseg, args.height, args.width,
                                              args.num_classes, args.runs, args.warmup)
    print(f"fasterseg: params={count_trainable_params(fasterseg)} "
          f"train_step_ms={1e3 * teacher_train:.1f} inference_ms={1e3 * teacher_infer:.1f}")
    print(f"ratio_deeplab_over_fasterseg: train_step={student_train / teacher_train:.2f} "
          f"inference={student_infer / teacher_infer:.2f}")


if __name__ == "__main__":
    main()
