"""Real supernet + student at tiny sizes when their modules exist, else the stand-ins."""
from __future__ import annotations

from lbt_tf import config as config_lib

AVAILABLE = ["stand_in"]
try:
    from lbt_tf.search.runner import import_builders
    import_builders()
    AVAILABLE.append("real")
except ImportError:
    pass

HEIGHT, WIDTH, NUM_CLASSES = 64, 128, 3


def tiny_config():
    return config_lib.replace(
        config_lib.Config(),
        **{"data.num_classes": NUM_CLASSES, "data.crop_height": HEIGHT, "data.crop_width": WIDTH,
           "data.image_height": HEIGHT, "data.image_width": WIDTH, "data.batch_size": 2,
           "teacher.layers": 4, "teacher.base_width": 2,
           "student.blocks_per_stage": (1, 1, 1, 1), "student.base_width": 4,
           "student.aspp_channels": 4, "student.aux_head": False})


def build(which, seed=0):
    """(supernet, student, num_classes) built at HEIGHT x WIDTH, deterministic (no sampling)."""
    import keras
    keras.utils.set_random_seed(seed)
    if which == "stand_in":
        from tests.search.stand_ins import build_tiny
        supernet, student = build_tiny(NUM_CLASSES, HEIGHT, WIDTH, seed)
        return supernet, student, NUM_CLASSES
    from lbt_tf.models.deeplab import build_student
    from lbt_tf.search.runner import import_builders
    build_supernet = import_builders()[0]
    config = tiny_config()
    supernet = build_supernet(config)
    supernet.sample_widths = False
    student = build_student(config.student, NUM_CLASSES, (HEIGHT, WIDTH, 3))
    return supernet, student, NUM_CLASSES


_REAL_BUILDS = None


def real_builds():
    """True when the real supernet and student build at the tiny size (cached)."""
    global _REAL_BUILDS
    if _REAL_BUILDS is None:
        try:
            _REAL_BUILDS = "real" in AVAILABLE and build("real") is not None
        except Exception:  # the models are being written in parallel; fall back to stand-ins
            _REAL_BUILDS = False
    return _REAL_BUILDS
