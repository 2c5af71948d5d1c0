"""Cityscapes on disk: the official directory layout, and the tfds `cityscapes` builder.

Directory layout (cityscapesScripts):
  <root>/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  <root>/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png
Listing checks every file before any model is built. `validate="header"` (the default) reads
the images' PNG headers only (missing label, unreadable or corrupt header, image/label size
mismatch) and decodes every label file to check its ids against the table, so that a bad id
is found by the listing, not at the first training step after the models are built. Cost
for a Cityscapes-sized train+val (3475 pairs, 2048x1024 labels): ~11 ms per label file and
core, i.e. ~20 s on 2 idle cores, ~3 s on 16 (measured: 50-100 s on a shared 2-core machine
at load 5-12, against 0.4 s for headers only); a search runs for days. `validate="full"` also
decodes every image. The input pipeline checks label ids again at decode time (for
`validate="none"`). Every problem is a `DataError` naming the file or directory.
"""
from __future__ import annotations

import concurrent.futures
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from lbt_tf.data.labels import MAX_RAW_ID
from lbt_tf.errors import DataError

IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
_IMAGE_NAME = re.compile(r"^([a-z\-]+)_(\d+)_(\d+)_leftImg8bit\.png$")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
VALIDATION_MODES = ("none", "header", "full")
TFDS_NAME = "cityscapes/semantic_segmentation"
TFDS_ZIPS = ("leftImg8bit_trainvaltest.zip", "gtFine_trainvaltest.zip")
TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def list_cityscapes_pairs(data_dir: str, split: str, validate: str = "header"
                          ) -> List[Tuple[str, str]]:
    """Sorted (image_path, label_path) pairs of one split of the official layout."""
    _check_mode(validate)
    images = list_cityscapes_images(data_dir, split, validate="none")
    pairs = []
    for image_path in images:
        stem = os.path.basename(image_path)[: -len(IMAGE_SUFFIX)]
        city = os.path.basename(os.path.dirname(image_path))
        label_path = os.path.join(data_dir, "gtFine", split, city, stem + LABEL_SUFFIX)
        if not os.path.isfile(label_path):
            raise DataError(f"image {image_path} has no label file: expected {label_path}")
        pairs.append((image_path, label_path))
    _check_all([(image, label) for image, label in pairs], validate)
    return pairs


def list_cityscapes_images(data_dir: str, split: str, validate: str = "header") -> List[str]:
    """Sorted left images of one split (the test split has no usable labels)."""
    _check_mode(validate)
    split_dir = os.path.join(_require_dir(data_dir, "--data_dir"), "leftImg8bit", split)
    _require_dir(split_dir, f"{split} split of --data_dir={data_dir}", named=False)
    images = []
    for city in sorted(os.listdir(split_dir)):
        city_dir = os.path.join(split_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if name.endswith(IMAGE_SUFFIX):
                if not _IMAGE_NAME.match(name):
                    raise DataError(f"{os.path.join(city_dir, name)}: not an official Cityscapes "
                                    "name (<city>_<seq>_<frame>_leftImg8bit.png)")
                images.append(os.path.join(city_dir, name))
    if not images:
        raise DataError(f"{split_dir} holds no *{IMAGE_SUFFIX} images (--data_dir)")
    _check_all([(image, None) for image in images], validate)
    return images


def list_image_folder(folder: str, validate: str = "header") -> List[str]:
    """Sorted images (png/jpg) anywhere under `folder` (--unlabeled_dir)."""
    _require_dir(folder, "--unlabeled_dir")
    images = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                    for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
    if not images:
        raise DataError(f"--unlabeled_dir={folder} holds no .png/.jpg images")
    _check_all([(image, None) for image in images], validate)
    return images


def check_pair(image_path: str, label_path: Optional[str], validate: str = "header") -> None:
    """Raises DataError naming the file if the image (and label) cannot be used."""
    if validate == "none":
        return
    image_size = _check_image(image_path, full=validate == "full", is_label=False)
    if label_path is None:
        return
    label_size = _check_image(label_path, full=True, is_label=True)  # ids checked in "header"
    if image_size != label_size:
        raise DataError(f"size mismatch: image {image_path} is {image_size[0]}x{image_size[1]} "
                        f"but its label {label_path} is {label_size[0]}x{label_size[1]} (WxH)")


def _check_image(path, full, is_label):
    try:
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            if full:
                image.load()
                pixels = np.asarray(image) if is_label else None
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as err:  # PIL raises many types for corrupt files
        raise DataError(f"{path}: cannot decode image ({err})") from None
    if is_label:
        if mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{path}: label image has mode {mode}, expected single channel ids")
        if full:
            bad = np.unique(pixels[(pixels > MAX_RAW_ID) | (pixels < 0)])
            if bad.size:
                raise DataError(f"{path}: label ids {bad.tolist()[:10]} are outside the "
                                f"Cityscapes table: allowed label ids 0..{MAX_RAW_ID} "
                                f"(*{LABEL_SUFFIX} holds label ids, not train ids)")
    elif mode not in ("RGB", "RGBA", "L", "P"):
        raise DataError(f"{path}: image mode {mode} is not RGB")
    return size


def _check_mode(validate):
    if validate not in VALIDATION_MODES:
        raise DataError(f"--validate_files={validate!r}: expected one of {VALIDATION_MODES}")


def _check_all(items: Sequence[Tuple[str, Optional[str]]], validate: str) -> None:
    _check_mode(validate)
    if validate == "none":
        return
    # Threads: PIL releases the GIL while decoding, so the label decode scales with the cores.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        for future in [pool.submit(check_pair, image, label, validate) for image, label in items]:
            future.result()  # re-raises the first DataError


def _require_dir(path, flag, named=True):
    """`named`: the flag's value is `path` itself; otherwise `flag` describes where it is from."""
    where = f"{flag}={path}" if named else f"{path} ({flag})"
    if not path:
        raise DataError(f"{flag} is not set")
    if not os.path.isdir(path):
        raise DataError(f"{where}: directory not found")
    if not os.listdir(path):
        raise DataError(f"{where}: directory is empty")
    return path


# ----------------------------------------------------------------------------------------- tfds
def prepare_tfds_cityscapes(manual_dir: Optional[str], data_dir: Optional[str]):
    """`tfds.builder("cityscapes/semantic_segmentation")`, prepared from the user's zips."""
    import tensorflow_datasets as tfds

    if not manual_dir or not os.path.isdir(manual_dir):
        raise DataError(f"--tfds_manual_dir={manual_dir}: directory not found (it must hold "
                        f"{' and '.join(TFDS_ZIPS)} from cityscapes-dataset.com)")
    missing = [z for z in TFDS_ZIPS if not os.path.isfile(os.path.join(manual_dir, z))]
    builder = tfds.builder(TFDS_NAME, data_dir=data_dir)
    try:
        if missing and not builder.is_prepared():
            raise DataError(f"--tfds_manual_dir={manual_dir} lacks {', '.join(missing)} "
                            "(download them from cityscapes-dataset.com)")
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except DataError:
        raise
    except Exception as err:  # tfds raises many types (archives, IO, builder): one DataError
        raise DataError(f"tfds {TFDS_NAME} (--tfds_manual_dir={manual_dir}, "
                        f"--tfds_data_dir={data_dir}) could not be prepared: {err}") from None
    return builder


def tfds_split_size(builder, split: str) -> int:
    return builder.info.splits[TFDS_SPLITS[split]].num_examples
