import os

import pytest

from lbt_tf import config as config_lib

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "fasterseg")
if not os.path.isdir(SHARED):
    SHARED = "/work/shared/fasterseg"


def shared_file(name):
    path = os.path.join(SHARED, name)
    if not os.path.exists(path):
        pytest.skip(f"FasterSeg reference data {path} not available")
    return path


def tiny_config(**changes):
    """A supernet small enough for 2 CPU cores: 4 layers, F=2, 32x64 crops, 3 classes."""
    base = {"teacher.layers": 4, "teacher.base_width": 2, "data.crop_height": 32,
            "data.crop_width": 64, "data.image_height": 32, "data.image_width": 64,
            "data.num_classes": 3}
    base.update(changes)
    return config_lib.replace(config_lib.Config(), **base)
