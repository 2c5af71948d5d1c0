"""Building the derived network of an architecture JSON, and finding a trained one on disk.

`--mode=train` writes `<run_dir>/train/model.weights.h5` and the architecture JSON beside it
(`arch.json`), so evaluate/export rebuild the same network without `--arch`.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

from lbt_tf.config import Config
from lbt_tf.errors import ArchitectureError, DataError

WEIGHTS_NAME = "model.weights.h5"
ARCH_NAME = "arch.json"


def train_dir(config: Config) -> str:
    return os.path.join(config.run_dir, "train")


def load_arch(path: Optional[str], flag: str = "--arch") -> dict:
    """Reads an architecture JSON (ours or FasterSeg's imported arch_0/arch_1)."""
    if not path:
        raise ArchitectureError(f"{flag} is required: the architecture JSON to build")
    if not os.path.isfile(path):
        raise ArchitectureError(f"{flag}={path}: no such file")
    from lbt_tf.models import fasterseg
    try:
        return fasterseg.load_architecture(path)
    except ArchitectureError:
        raise
    except (ValueError, KeyError, TypeError) as err:  # malformed content the loader missed
        raise ArchitectureError(f"{flag}={path}: not a valid architecture JSON ({err})") from None


def build_network(config: Config, arch: dict, input_hw: Tuple[int, int]):
    """The derived network at a fixed input size (its resizes need static shapes).

    Always built with the auxiliary heads, so one weights file fits every size and use.
    """
    from lbt_tf.models import fasterseg
    height, width = input_hw
    if height % 32 or width % 32:
        raise ArchitectureError(f"network input {height}x{width}: height and width must be "
                                "divisible by 32 (--image_height/--image_width/--crop_*)")
    return fasterseg.build_derived_network(arch, config.data.num_classes,
                                           input_shape=(height, width, 3),
                                           base_width=config.teacher.base_width,
                                           aux_heads=True)


def save_arch_beside_weights(arch: dict, directory: str) -> str:
    """Writes the architecture (our JSON form, also for an imported FasterSeg arch) beside the
    weights, so evaluate/export rebuild the same network."""
    from lbt_tf.models import fasterseg
    target = os.path.join(directory, ARCH_NAME)
    fasterseg.save_architecture(arch, target)
    return target


def load_trained_network(config: Config, input_hw: Tuple[int, int]):
    """The network trained by `--mode=train` in `<run_dir>/train/`, rebuilt at `input_hw`.

    `--arch` overrides the architecture saved beside the weights. Returns (model, arch).
    """
    directory = train_dir(config)
    weights = os.path.join(directory, WEIGHTS_NAME)
    if not os.path.isfile(weights):
        raise DataError(f"{weights}: no trained weights; run --mode=train with this --run_dir "
                        "first")
    arch_path = config.train.arch or os.path.join(directory, ARCH_NAME)
    arch = load_arch(arch_path, flag="--arch" if config.train.arch else arch_path)
    model = build_network(config, arch, input_hw)
    try:
        model.load_weights(weights)
    except ValueError as err:
        raise ArchitectureError(f"{weights} does not fit the architecture {arch_path} "
                                f"(--num_classes/--base_width as in training?): {err}") from None
    return model, arch


def logits_of(outputs):
    """The full-resolution logits of a network's output (a dict, or a bare tensor)."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs
