"""The models the search tests run on, and public helpers shared by the search tests.

`build("real")`: the real FasterSeg supernet and DeepLabV3 student at a tiny size (imported
unconditionally: if they break, these tests fail). `build("stand_in")`: tests/search/stand_ins.py,
for tests that need a model that small.
"""
from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf.config import SearchConfig
from lbt_tf.models.deeplab import build_student
from lbt_tf.models.fasterseg import build_supernet
from lbt_tf.search import learner, unrolled
from lbt_tf.search.lbt_model import LBTSearch
from tests.search.stand_ins import build_tiny

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = ("stand_in", "real")
HEIGHT, WIDTH, NUM_CLASSES = 64, 128, 3
# The stand-in search under `fit` (test_lbt_model, distributed_check).
STAND_IN_HEIGHT, STAND_IN_WIDTH = 32, 64


def tiny_config():
    """The real supernet and student at a size 2 CPU cores trace in seconds."""
    return config_lib.replace(
        config_lib.Config(),
        **{"data.num_classes": NUM_CLASSES, "data.crop_height": HEIGHT, "data.crop_width": WIDTH,
           "data.image_height": HEIGHT, "data.image_width": WIDTH, "data.batch_size": 2,
           "teacher.layers": 4, "teacher.base_width": 2,
           "student.blocks_per_stage": (1, 1, 1, 1), "student.base_width": 4,
           "student.aspp_channels": 4, "student.aux_head": False})


def build(which, seed=0, cell_tracing=None):
    """(supernet, student, num_classes) built at HEIGHT x WIDTH, deterministic (no sampling);
    `cell_tracing`: the real supernet's --cell_tracing (default: the config's)."""
    keras.utils.set_random_seed(seed)
    if which == "stand_in":
        supernet, student = build_tiny(NUM_CLASSES, HEIGHT, WIDTH, seed)
        return supernet, student, NUM_CLASSES
    config = tiny_config()
    if cell_tracing is not None:
        config = config_lib.replace(config, **{"teacher.cell_tracing": cell_tracing})
    supernet = build_supernet(config)
    supernet.sample_widths = False
    student = build_student(config.student, NUM_CLASSES, (HEIGHT, WIDTH, 3))
    return supernet, student, NUM_CLASSES


def teacher_problem(which, sample_widths):
    """A teacher-only `SearchProblem` over `build(which)`'s supernet (shared cell functions),
    widths Gumbel-sampled or not."""
    supernet, _, _ = build(which, cell_tracing="shared")
    supernet.sample_widths = sample_widths
    return unrolled.SearchProblem(teacher=learner.Learner(supernet, supernet.arch_variables),
                                  student=None, ignore_label=255)


def stand_in_search_model(mode="lbt", hypergrad="exact", **overrides):
    """A compiled LBTSearch over the stand-ins (32x64 input, NUM_CLASSES classes)."""
    supernet, student = build_tiny(NUM_CLASSES, STAND_IN_HEIGHT, STAND_IN_WIDTH)
    cfg = dataclasses.replace(SearchConfig(), mode=mode, hypergrad=hypergrad, **overrides)
    model = LBTSearch(supernet, student if mode != "fasterseg" else None, cfg, ignore_label=255,
                      num_classes=NUM_CLASSES, latency_fn=supernet.expected_latency,
                      latency_weight=0.01)
    model.compile()
    return model


def search_dataset(steps, batch=2, poison_from=None):
    """`steps` batches of the five search sources (random 32x64 images); from step
    `poison_from` on, NaN/inf teacher images."""
    rng = np.random.default_rng(0)
    size = (steps * batch, STAND_IN_HEIGHT, STAND_IN_WIDTH)

    def labeled():
        return (rng.normal(size=size + (3,)).astype(np.float32),
                rng.integers(0, NUM_CLASSES, size=size).astype(np.int32))

    data = {"teacher_train": labeled(), "teacher_val": labeled(), "student_train": labeled(),
            "student_val": labeled(), "unlabeled": rng.normal(size=size + (3,)).astype(np.float32)}
    if poison_from is not None:
        data["teacher_train"][0][poison_from * batch:] = np.nan
        data["teacher_val"][0][poison_from * batch:] = np.inf
    return tf.data.Dataset.from_tensor_slices(data).batch(batch, drop_remainder=True)


def values(variables):
    """Copies of the variables' current values."""
    return [v.numpy().copy() for v in variables]


def flagfile_config(path):
    """The Config of a shipped flagfile (configs/*.flags), parsed on fresh FlagValues."""
    from absl import flags

    from lbt_tf import flags as lbt_flags
    flag_values = flags.FlagValues()
    for name in list(lbt_flags.FLAG_TABLE) + ["mode"]:
        flag_values[name] = flags.FLAGS[name]
    flag_values.unparse_flags()
    flag_values(["prog", f"--flagfile={path}"])
    return lbt_flags.build_config(flag_values)


def demo_problem(seed=0):
    """(SearchProblem, Batches, xi_t, xi_s) at configs/demo.flags (float32, fixed seeds, widths
    not sampled), on one batch of the demo's synthetic search input. No latency term: it has its
    own tape, the same for every hypergradient method."""
    from lbt_tf.models.deeplab import build_student_from_config
    from lbt_tf.search import learner, runner, unrolled

    config = flagfile_config(os.path.join(ROOT, "configs", "demo.flags"))
    keras.utils.set_random_seed(seed)
    supernet = build_supernet(config)
    supernet.sample_widths = False
    student = build_student_from_config(config)
    s = config.search
    problem = unrolled.SearchProblem(
        teacher=learner.Learner(supernet, supernet.arch_variables),
        student=learner.Learner(student), ignore_label=config.data.ignore_label,
        pseudo_label_weight=s.pseudo_label_weight, student_val_weight=s.student_val_weight,
        finite_difference_scale=s.finite_difference_scale,
        student_aux_weight=s.student_aux_weight)
    train, _, _ = runner.make_search_input(config, s.mode, seed)
    batches = learner.Batches.from_dict(next(iter(train)))
    return problem, batches, s.teacher_lr, s.student_lr


# The arch tensor groups of the supernet: alpha_*, beta_*, gamma_*.
GROUPS = ("alpha", "beta", "gamma")


def by_group(problem, grads):
    """{group: the group's gradients flattened into one vector}."""
    names = [n.split("/")[-1] for n in problem.teacher.arch_names]
    return {g: tf.concat([tf.reshape(t, [-1]) for n, t in zip(names, grads) if n.startswith(g)],
                         0) for g in GROUPS}


def agreement(problem, approx, exact):
    """{group: (cosine, relative norm error)} of two arch gradients."""
    approx, exact = by_group(problem, approx), by_group(problem, exact)
    out = {}
    for group in GROUPS:
        a, e = approx[group], exact[group]
        cosine = tf.reduce_sum(a * e) / (tf.norm(a) * tf.norm(e))
        out[group] = (float(cosine), float(tf.norm(a - e) / tf.norm(e)))
    return out
