"""Writes a tiny fake Cityscapes tree with the official file names (PNG via PIL)."""
import os

import numpy as np
from PIL import Image


HEIGHT, WIDTH = 32, 64
CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}


def all_raw_ids_label(offset=0):
    """Every raw id 0..33 appears: id = (row * WIDTH + col + offset) % 34."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return ((rows * WIDTH + cols + offset) % 34).astype(np.uint8)


def write_example(root, split, city, seq, frame, label=None, image_size=(HEIGHT, WIDTH)):
    stem = f"{city}_{seq:06d}_{frame:06d}"
    image_dir = os.path.join(root, "leftImg8bit", split, city)
    label_dir = os.path.join(root, "gtFine", split, city)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    rng = np.random.default_rng(seq * 1000 + frame)
    image = rng.integers(0, 256, image_size + (3,), dtype=np.uint8)
    image_path = os.path.join(image_dir, stem + "_leftImg8bit.png")
    Image.fromarray(image).save(image_path)
    label_path = os.path.join(label_dir, stem + "_gtFine_labelIds.png")
    if label is not False:
        label = all_raw_ids_label(frame) if label is None else label
        Image.fromarray(label).save(label_path)
    return image_path, label_path
