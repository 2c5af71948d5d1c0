"""`--mode=predict --input=IMG_OR_DIR --output=DIR`: label maps of images with the exported
SavedModel (`--export_dir`, default `<run_dir>/export`).

Writes `<name>_labels.png` (Cityscapes palette) and `<name>_overlay.png` for every readable image,
or with `--prediction_format=cityscapes` one `<name>_labelIds.png` of Cityscapes label ids (train
ids mapped back, as gtFine `*_labelIds.png`) per image, found anywhere under --input: the official
scorer (cityscapesscripts' evalPixelLevelSemanticLabeling) matches `<city>_<seq>_<frame>*.png`.
Unreadable files get a warning line naming them and are skipped, the rest are still processed.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from lbt_tf.config import Config, ConfigError
from lbt_tf.data.labels import train_to_label_id
from lbt_tf.errors import DataError
from lbt_tf.retrain import serving
from lbt_tf.retrain.export import export_dir

OVERLAY_ALPHA = 0.5
TRAIN_TO_LABEL_ID = train_to_label_id()


def list_inputs(path: str, recursive: bool = False) -> List[str]:
    """The file itself, or every non-hidden file of the folder (sorted; with `recursive`, of its
    subfolders too: a Cityscapes split has one folder per city)."""
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path) and recursive:
        return sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                      for name in names if not name.startswith("."))
    if os.path.isdir(path):
        return [os.path.join(path, name) for name in sorted(os.listdir(path))
                if not name.startswith(".") and os.path.isfile(os.path.join(path, name))]
    raise DataError(f"--input={path}: no such file or folder")


def read_rgb(path: str) -> np.ndarray:
    """uint8 [H, W, 3]; raises OSError/ValueError for files PIL cannot decode."""
    with Image.open(path) as image:
        image.load()  # decode now: truncated files fail here, not later
        return np.asarray(image.convert("RGB"), np.uint8)


def overlay(image: np.ndarray, colour_labels: np.ndarray, alpha: float = OVERLAY_ALPHA):
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colour_labels.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def load_serving_signature(saved_model_dir: str):
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise DataError(f"{saved_model_dir}: no SavedModel (saved_model.pb); run --mode=export "
                        "first or pass --export_dir")
    loaded = tf.saved_model.load(saved_model_dir)
    if serving.SIGNATURE_NAME not in loaded.signatures:
        raise DataError(f"{saved_model_dir}: no {serving.SIGNATURE_NAME!r} signature")
    return loaded, loaded.signatures[serving.SIGNATURE_NAME]


def run_predict(config: Config) -> dict:
    """Predicts every image of `--input`; returns {"processed": [...], "skipped": [...]}."""
    from lbt_tf.data.visualize import colorize
    if not config.export.input:
        raise ConfigError("--mode=predict needs --input (an image file or a folder)")
    cityscapes = config.export.prediction_format == "cityscapes"
    paths = list_inputs(config.export.input, recursive=cityscapes)
    out_dir = config.export.output or os.path.join(config.run_dir, "predict")
    os.makedirs(out_dir, exist_ok=True)
    _, signature = load_serving_signature(export_dir(config))
    processed, skipped = [], []
    for path in paths:
        try:
            image = read_rgb(path)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            print(f"warning: skipping {path}: not a readable image ({err})")
            skipped.append(path)
            continue
        labels = signature(images=tf.constant(image[None]))["labels"][0].numpy()
        stem = os.path.splitext(os.path.basename(path))[0]
        processed.append(path)
        if cityscapes:
            label_ids = TRAIN_TO_LABEL_ID[np.clip(labels, 0, 255)]
            Image.fromarray(label_ids).save(os.path.join(out_dir, f"{stem}_labelIds.png"))
            continue
        colour = np.asarray(colorize(labels), np.uint8)
        Image.fromarray(colour).save(os.path.join(out_dir, f"{stem}_labels.png"))
        Image.fromarray(overlay(image, colour)).save(os.path.join(out_dir, f"{stem}_overlay.png"))
    print(f"predict: processed {len(processed)}, skipped {len(skipped)}; output={out_dir}")
    return {"processed": processed, "skipped": skipped, "output": out_dir}
