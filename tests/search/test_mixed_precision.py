"""--mixed_precision=mixed_bfloat16: the exact LBT hypergradient at the demo config's model sizes
with the student in bfloat16 compute (as runner.build_search_model builds it; the supernet stays
float32) points where the all-float32 one does (cosine >= 0.95), and stays float32.

Measured here (cosine to float32 on a synthetic-scene batch): student in bfloat16 0.9998;
supernet in bfloat16 0.48 (its first-order gradient alone 0.91: the second-order path through
the virtual teacher step is what bfloat16 loses), hence the float32 supernet."""
from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf.models.deeplab import build_student_from_config
from lbt_tf.models.fasterseg import build_supernet
from lbt_tf.search import learner, runner, unrolled

# configs/demo.flags' model and input sizes.
DEMO = {"data.crop_height": 64, "data.crop_width": 128, "data.image_height": 64,
        "data.image_width": 128, "data.num_classes": 19, "teacher.layers": 6,
        "teacher.base_width": 4, "student.blocks_per_stage": (1, 1, 1, 1),
        "student.base_width": 8, "student.aspp_channels": 32, "student.output_stride": 8}


def _student(config, policy):
    with runner.dtype_policy(policy):
        keras.utils.set_random_seed(1)
        return build_student_from_config(config)


def _problem(config, supernet, student):
    return unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables),
        student=learner.Learner(student), ignore_label=255,
        student_aux_weight=config.search.student_aux_weight)


def _batches(rng, batch=2, height=64, width=128, classes=19):
    def labeled():
        return (tf.constant(rng.normal(size=(batch, height, width, 3)), tf.float32),
                tf.constant(rng.integers(0, classes, size=(batch, height, width)), tf.int32))

    return learner.Batches(teacher_train=labeled(), teacher_val=labeled(),
                           student_train=labeled(), student_val=labeled(),
                           unlabeled=tf.constant(rng.normal(size=(batch, height, width, 3)),
                                                 tf.float32))


def _hypergradient(problem):
    return problem.unrolled_hypergradient(
        problem.teacher.weight_values(), problem.teacher.arch_values(),
        problem.student.weight_values(), 0.01, 0.01, 0.0,
        _batches(np.random.default_rng(0))).grads


def test_bfloat16_hypergradient_agrees_with_float32():
    config = config_lib.replace(config_lib.Config(), **DEMO)
    keras.utils.set_random_seed(0)
    supernet = build_supernet(config)
    supernet.sample_widths = False  # no Gumbel noise: both runs see the same widths
    full_student = _student(config, "float32")
    mixed_student = _student(config, "mixed_bfloat16")
    assert full_student.compute_dtype == "float32"
    assert mixed_student.compute_dtype == "bfloat16"
    assert all(v.dtype == "float32" for v in mixed_student.weights)
    mixed_student.set_weights(full_student.get_weights())
    expected = _hypergradient(_problem(config, supernet, full_student))
    got = _hypergradient(_problem(config, supernet, mixed_student))
    assert all(g.dtype == tf.float32 for g in got)
    a, b = (np.concatenate([g.numpy().ravel() for g in grads]) for grads in (got, expected))
    cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    print(f"cosine(bfloat16 student, float32) = {cosine:.5f}")
    assert cosine >= 0.95


def test_mixed_precision_flag_is_checked():
    config = config_lib.replace(config_lib.Config(), **{"search.mixed_precision": "mixed_float16"})
    with pytest.raises(config_lib.ConfigError, match="--mixed_precision"):
        config_lib.validate(config)
