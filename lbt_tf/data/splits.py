"""The LBT data splits (`--mode=splits` prints them).

The labeled train split is shuffled with the seed; `teacher_fraction` of it goes to the teacher
(split by `teacher_train_fraction` into D_t^tr / D_t^val), the rest to the student (split by
`student_train_fraction` into D_s^tr / D_s^val). D_u (labels dropped) comes from the test split or
a folder of images and holds round(pseudo_label_ratio * |D_s^tr|) images, capped at what exists.
The official val split is kept whole for evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
from absl import logging

from lbt_tf import names
from lbt_tf.data import cityscapes
from lbt_tf.errors import DataError

# The synthetic world is fixed: --seed changes how it is split (as with real data), not its images.
SYNTHETIC_WORLD_SEED = 0


@dataclasses.dataclass(frozen=True)
class Source:
    """Examples of one split: what to read, not yet read.

    kind: synthetic (keys: scene indices of `split`), files (keys: (image_path, label_path or
    None)) or tfds (keys: example positions in the tfds `split`). `labeled=False` means labels are
    never produced, even where they exist (D_u from the train split of a folder).
    """
    name: str
    kind: str
    keys: Tuple
    labeled: bool
    split: str = "train"
    seed: int = SYNTHETIC_WORLD_SEED

    def __len__(self):
        return len(self.keys)

    def take(self, count: int) -> "Source":
        return dataclasses.replace(self, keys=tuple(self.keys[:count]))


@dataclasses.dataclass(frozen=True)
class LBTSplits:
    teacher_train: Source
    teacher_val: Source
    student_train: Source
    student_val: Source
    unlabeled: Source
    val: Source
    test: Source

    def items(self):
        return [(name, getattr(self, name)) for name in names.LBT_SPLITS]


def make_splits(data_config, seed: int) -> LBTSplits:
    train, val, test = _official_splits(data_config)
    if len(train) < 4:
        raise DataError(f"the labeled train split has {len(train)} examples; LBT needs at least 4 "
                        "(teacher/student x train/val)")
    order = np.random.default_rng(seed).permutation(len(train))
    shuffled = [train.keys[i] for i in order]
    n_teacher = _part(len(shuffled), data_config.teacher_fraction, "--teacher_fraction")
    teacher, student = shuffled[:n_teacher], shuffled[n_teacher:]
    n_t_train = _part(len(teacher), data_config.teacher_train_fraction,
                      "--teacher_train_fraction")
    n_s_train = _part(len(student), data_config.student_train_fraction,
                      "--student_train_fraction")

    def sub(name, keys):
        return dataclasses.replace(train, name=name, keys=tuple(sorted(keys)))

    student_train = sub("student_train", student[:n_s_train])
    unlabeled_pool = _unlabeled_pool(data_config, test)
    wanted = int(round(data_config.pseudo_label_ratio * len(student_train)))
    if wanted > len(unlabeled_pool):
        logging.warning("--pseudo_label_ratio=%g asks for %d unlabeled images but %s has only %d;"
                        " using %d (images are not repeated)", data_config.pseudo_label_ratio,
                        wanted, unlabeled_pool.name, len(unlabeled_pool), len(unlabeled_pool))
        wanted = len(unlabeled_pool)
    pick = np.random.default_rng([seed, 1]).permutation(len(unlabeled_pool))[:wanted]
    unlabeled = dataclasses.replace(unlabeled_pool, name="unlabeled", labeled=False,
                                    keys=tuple(unlabeled_pool.keys[i] for i in sorted(pick)))
    return LBTSplits(teacher_train=sub("teacher_train", teacher[:n_t_train]),
                     teacher_val=sub("teacher_val", teacher[n_t_train:]),
                     student_train=student_train,
                     student_val=sub("student_val", student[n_s_train:]),
                     unlabeled=unlabeled, val=val, test=test)


def _part(total, fraction, flag):
    """round(fraction * total), keeping both parts non-empty."""
    count = int(round(fraction * total))
    count = min(max(count, 1), total - 1)
    if total < 2:
        raise DataError(f"{flag}={fraction}: {total} example(s) cannot be split in two")
    return count


def _official_splits(data_config):
    """(train, val, test) Sources of the configured data source; test is unlabeled."""
    d = data_config
    if d.source == "synthetic":
        return (Source("train", "synthetic", tuple(range(d.synthetic_train_size)), True, "train"),
                Source("val", "synthetic", tuple(range(d.synthetic_val_size)), True, "val"),
                Source("test", "synthetic", tuple(range(d.synthetic_test_size)), False, "test"))
    if d.source == "cityscapes":
        check = d.validate_files
        train = cityscapes.list_cityscapes_pairs(d.data_dir, "train", check)
        val = cityscapes.list_cityscapes_pairs(d.data_dir, "val", check)
        needs_test = d.unlabeled_source == "test"
        test = cityscapes.list_cityscapes_images(d.data_dir, "test", check) if needs_test \
            else _optional_test_images(d.data_dir, check)
        return (Source("train", "files", tuple(train), True, "train"),
                Source("val", "files", tuple(val), True, "val"),
                Source("test", "files", tuple((path, None) for path in test), False, "test"))
    if d.source == "tfds_cityscapes":
        builder = cityscapes.prepare_tfds_cityscapes(d.tfds_manual_dir, d.tfds_data_dir)
        return tuple(
            Source(split, "tfds", tuple(range(cityscapes.tfds_split_size(builder, split))),
                   split != "test", split) for split in ("train", "val", "test"))
    raise DataError(f"--data_source={d.source!r}: expected synthetic, cityscapes or "
                    "tfds_cityscapes")


def _optional_test_images(data_dir, check):
    try:
        return cityscapes.list_cityscapes_images(data_dir, "test", check)
    except DataError:
        return []


def _unlabeled_pool(data_config, test):
    if data_config.unlabeled_source == "test":
        if not len(test):
            raise DataError("--unlabeled_source=test but the test split has no images")
        return test
    if data_config.unlabeled_source == "folder":
        images = cityscapes.list_image_folder(data_config.unlabeled_dir,
                                              data_config.validate_files)
        return Source("unlabeled_folder", "files", tuple((path, None) for path in images), False,
                      "folder")
    raise DataError(f"--unlabeled_source={data_config.unlabeled_source!r}: expected test or "
                    "folder")


def run_print_splits(config):
    """`--mode=splits`: the size of every LBT split."""
    splits = make_splits(config.data, config.seed)
    print(f"LBT splits of --data_source={config.data.source} (seed {config.seed}):")
    for name, source in splits.items():
        labels = "labeled" if source.labeled else "unlabeled"
        print(f"  {name:<14} {len(source):>6} images  ({source.kind}:{source.split}, {labels})")
    return splits
