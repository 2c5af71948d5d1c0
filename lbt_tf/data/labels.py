"""The Cityscapes label table (cityscapesScripts `helpers/labels.py`) and lookups derived from it.

Raw label ids (the values in `*_gtFine_labelIds.png`) go to the 19 training ids through
`RAW_TO_TRAIN_ID`; ids whose trainId is 255 or -1 map to the configured ignore label.
"""
from __future__ import annotations

import collections

import numpy as np

Label = collections.namedtuple("Label", ["name", "id", "train_id", "category", "color"])

# name, id, trainId, category, color  (order and values as in cityscapesScripts).
LABELS = (
    Label("unlabeled", 0, 255, "void", (0, 0, 0)),
    Label("ego vehicle", 1, 255, "void", (0, 0, 0)),
    Label("rectification border", 2, 255, "void", (0, 0, 0)),
    Label("out of roi", 3, 255, "void", (0, 0, 0)),
    Label("static", 4, 255, "void", (0, 0, 0)),
    Label("dynamic", 5, 255, "void", (111, 74, 0)),
    Label("ground", 6, 255, "void", (81, 0, 81)),
    Label("road", 7, 0, "flat", (128, 64, 128)),
    Label("sidewalk", 8, 1, "flat", (244, 35, 232)),
    Label("parking", 9, 255, "flat", (250, 170, 160)),
    Label("rail track", 10, 255, "flat", (230, 150, 140)),
    Label("building", 11, 2, "construction", (70, 70, 70)),
    Label("wall", 12, 3, "construction", (102, 102, 156)),
    Label("fence", 13, 4, "construction", (190, 153, 153)),
    Label("guard rail", 14, 255, "construction", (180, 165, 180)),
    Label("bridge", 15, 255, "construction", (150, 100, 100)),
    Label("tunnel", 16, 255, "construction", (150, 120, 90)),
    Label("pole", 17, 5, "object", (153, 153, 153)),
    Label("polegroup", 18, 255, "object", (153, 153, 153)),
    Label("traffic light", 19, 6, "object", (250, 170, 30)),
    Label("traffic sign", 20, 7, "object", (220, 220, 0)),
    Label("vegetation", 21, 8, "nature", (107, 142, 35)),
    Label("terrain", 22, 9, "nature", (152, 251, 152)),
    Label("sky", 23, 10, "sky", (70, 130, 180)),
    Label("person", 24, 11, "human", (220, 20, 60)),
    Label("rider", 25, 12, "human", (255, 0, 0)),
    Label("car", 26, 13, "vehicle", (0, 0, 142)),
    Label("truck", 27, 14, "vehicle", (0, 0, 70)),
    Label("bus", 28, 15, "vehicle", (0, 60, 100)),
    Label("caravan", 29, 255, "vehicle", (0, 0, 90)),
    Label("trailer", 30, 255, "vehicle", (0, 0, 110)),
    Label("train", 31, 16, "vehicle", (0, 80, 100)),
    Label("motorcycle", 32, 17, "vehicle", (0, 0, 230)),
    Label("bicycle", 33, 18, "vehicle", (119, 11, 32)),
    Label("license plate", -1, -1, "vehicle", (0, 0, 142)),
)

MAX_RAW_ID = max(label.id for label in LABELS)  # 33: larger values are outside the table
NUM_TRAIN_CLASSES = 19

_TRAINING_LABELS = sorted((l for l in LABELS if 0 <= l.train_id < 255), key=lambda l: l.train_id)
TRAIN_ID_NAMES = tuple(l.name for l in _TRAINING_LABELS)
CITYSCAPES_PALETTE = np.array([l.color for l in _TRAINING_LABELS], dtype=np.uint8)  # [19, 3]


def raw_to_train_id(ignore_label: int = 255) -> np.ndarray:
    """Lookup array indexed by raw id 0..33: the train id, or `ignore_label` for void classes.

    The license plate (id -1) never appears in labelIds PNGs; `train_id_of(-1)` covers it.
    """
    lookup = np.full(MAX_RAW_ID + 1, ignore_label, dtype=np.int32)
    for label in LABELS:
        if label.id >= 0 and 0 <= label.train_id < 255:
            lookup[label.id] = label.train_id
    return lookup


def train_to_label_id() -> np.ndarray:
    """Lookup array indexed by train id 0..255: the Cityscapes label id (gtFine `labelIds`, as
    the official scorer reads predictions); any other value -> 0 (unlabeled)."""
    lookup = np.zeros(256, dtype=np.uint8)
    for label in _TRAINING_LABELS:
        lookup[label.train_id] = label.id
    return lookup


def train_id_of(raw_id: int, ignore_label: int = 255) -> int:
    """Train id of one raw id (including -1), with trainId 255/-1 -> `ignore_label`."""
    for label in LABELS:
        if label.id == raw_id:
            return label.train_id if 0 <= label.train_id < 255 else ignore_label
    raise KeyError(f"raw label id {raw_id} is not in the Cityscapes table")


def train_id_by_name(name: str) -> int:
    return TRAIN_ID_NAMES.index(name)
