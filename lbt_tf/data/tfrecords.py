"""Materialising the LBT splits as TFRecords, with a schema and a statistics summary.

This is what the pipeline's `example_gen` component runs (TFX's ExampleGen + StatisticsGen +
SchemaGen in one step). Each split becomes `<output_dir>/<split>.tfrecord` of `tf.train.Example`s
holding the image as it enters the networks (decoded and resized to image_height x
image_width, before augmentation and normalisation) as PNG bytes, and its label map as PNG bytes
(labeled splits only). `schema.json` describes the features, `statistics.json` counts images and
class pixels per split, and `splits.json` records the example keys so a later step can check it
is looking at the same splits (`splits_fingerprint`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterator, Optional

import numpy as np
import tensorflow as tf

from lbt_tf import names
from lbt_tf.config import Config, DataConfig
from lbt_tf.errors import DataError

# The splits an LBT search and its evaluation read, in LBTSplits' field names.
SPLIT_NAMES = names.RECORD_SPLITS
SCHEMA_NAME = "schema.json"
STATISTICS_NAME = "statistics.json"
SPLITS_NAME = "splits.json"


def schema(data_config: DataConfig) -> dict:
    """The features of every Example, in the spirit of a TFX schema (type, shape, domain)."""
    return {
        "features": {
            "image": {"type": "bytes", "encoding": "png", "dtype": "uint8",
                      "shape": [data_config.image_height, data_config.image_width, 3]},
            "label": {"type": "bytes", "encoding": "png", "dtype": "uint8",
                      "shape": [data_config.image_height, data_config.image_width],
                      "domain": {"min": 0, "max": data_config.num_classes - 1,
                                 "ignore": data_config.ignore_label},
                      "presence": "labeled splits only"},
            "height": {"type": "int", "value": data_config.image_height},
            "width": {"type": "int", "value": data_config.image_width},
            "index": {"type": "int", "description": "position of the example in its split"},
        },
        "splits": list(SPLIT_NAMES),
    }


def _source_keys(source) -> dict:
    """What identifies a split's examples: its kind, official split and keys."""
    return {"kind": getattr(source, "kind", None), "split": getattr(source, "split", None),
            "keys": [list(k) if isinstance(k, (tuple, list)) else k for k in source.keys]}


def splits_fingerprint(splits) -> str:
    """A short hash of the example keys of every split: equal iff the splits are the same."""
    payload = {name: _source_keys(getattr(splits, name)) for name in SPLIT_NAMES}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _eval_examples(data_config: DataConfig, source) -> Iterator[tuple]:
    """(uint8 image [H,W,3], int label [H,W] or None) of a split, in key order, un-augmented."""
    from lbt_tf.data import denormalize, make_dataset
    # deterministic: the i-th record is the i-th key of the split (recorded in splits.json)
    dataset = make_dataset(dataclasses.replace(data_config, deterministic=True), source,
                           training=False)
    for batch in dataset:
        if isinstance(batch, (tuple, list)):
            images, labels = batch
        else:
            images, labels = batch, None
        images = np.asarray(denormalize(images, data_config))
        for i in range(images.shape[0]):
            yield images[i], (None if labels is None else np.asarray(labels[i]))


def _bytes_feature(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def write_splits(config: Config, output_dir: str) -> dict:
    """Writes every LBT split as TFRecords plus schema/statistics/splits JSON; returns the stats.

    Statistics per split: number of examples, per-class pixel counts and frequencies, the share
    of ignored pixels and the per-channel mean of the uint8 images.
    """
    from lbt_tf.data import make_splits
    data_config = config.data
    splits = make_splits(data_config, config.seed)
    os.makedirs(output_dir, exist_ok=True)
    statistics = {"fingerprint": splits_fingerprint(splits), "splits": {}}
    for name in SPLIT_NAMES:
        source = getattr(splits, name)
        path = os.path.join(output_dir, f"{name}.tfrecord")
        class_pixels = np.zeros(data_config.num_classes, np.int64)
        ignored_pixels = 0
        channel_sum = np.zeros(3, np.float64)
        count = 0
        with tf.io.TFRecordWriter(path) as writer:
            for index, (image, label) in enumerate(_eval_examples(data_config, source)):
                feature = {"image": _bytes_feature(tf.io.encode_png(image).numpy()),
                           "height": _int_feature(image.shape[0]),
                           "width": _int_feature(image.shape[1]),
                           "index": _int_feature(index)}
                if label is not None:
                    valid = label != data_config.ignore_label
                    class_pixels += np.bincount(label[valid].ravel(),
                                                minlength=data_config.num_classes
                                                )[:data_config.num_classes]
                    ignored_pixels += int((~valid).sum())
                    label_png = tf.io.encode_png(label.astype(np.uint8)[..., None]).numpy()
                    feature["label"] = _bytes_feature(label_png)
                channel_sum += image.reshape(-1, 3).mean(axis=0)
                count += 1
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
        labeled = bool(getattr(source, "labeled", True)) and name != "unlabeled"
        total_labeled = int(class_pixels.sum()) + ignored_pixels
        statistics["splits"][name] = {
            "path": os.path.basename(path),
            "num_examples": count,
            "labeled": labeled,
            "class_pixels": class_pixels.tolist() if labeled else None,
            "class_frequency": ((class_pixels / max(total_labeled, 1)).round(6).tolist()
                                if labeled else None),
            "ignored_fraction": (round(ignored_pixels / max(total_labeled, 1), 6)
                                 if labeled else None),
            "image_channel_mean": (channel_sum / max(count, 1)).round(3).tolist(),
        }
    _write_json(os.path.join(output_dir, SCHEMA_NAME), schema(data_config))
    _write_json(os.path.join(output_dir, STATISTICS_NAME), statistics)
    _write_json(os.path.join(output_dir, SPLITS_NAME),
                {"fingerprint": statistics["fingerprint"], "seed": config.seed,
                 "data": dataclasses.asdict(data_config),
                 "keys": {name: _source_keys(getattr(splits, name)) for name in SPLIT_NAMES}})
    return statistics


def read_split(examples_dir: str, split: str, data_config: Optional[DataConfig] = None
               ) -> tf.data.Dataset:
    """The Examples of one split as a dataset of dicts {"image": uint8 [H,W,3], "label":
    uint8 [H,W] (labeled splits), "index": int64}."""
    path = os.path.join(examples_dir, f"{split}.tfrecord")
    if split not in SPLIT_NAMES or not tf.io.gfile.exists(path):
        raise DataError(f"{path}: no such TFRecord split (expected one of {SPLIT_NAMES} "
                        "written by example_gen)")
    labeled = load_statistics(examples_dir)["splits"][split]["labeled"]
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "index": tf.io.FixedLenFeature([], tf.int64)}
    if labeled:
        spec["label"] = tf.io.FixedLenFeature([], tf.string)

    def parse(serialized):
        features = tf.io.parse_single_example(serialized, spec)
        out = {"image": tf.io.decode_png(features["image"], channels=3),
               "index": features["index"]}
        if labeled:
            out["label"] = tf.io.decode_png(features["label"], channels=1)[..., 0]
        return out

    return tf.data.TFRecordDataset(path).map(parse)


def load_statistics(examples_dir: str) -> dict:
    path = os.path.join(examples_dir, STATISTICS_NAME)
    if not tf.io.gfile.exists(path):
        raise DataError(f"{path}: missing; is {examples_dir} an example_gen output?")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def check_same_splits(config: Config, examples_dir: str) -> str:
    """Raises DataError unless `config` makes the splits that were materialised in
    `examples_dir` (same data, seed and fractions); returns the fingerprint."""
    from lbt_tf.data import make_splits
    recorded = load_statistics(examples_dir)["fingerprint"]
    current = splits_fingerprint(make_splits(config.data, config.seed))
    if recorded != current:
        raise DataError(f"{examples_dir}: its splits (fingerprint {recorded}) differ from the "
                        f"splits of this config (fingerprint {current}); check --seed and the "
                        "data flags")
    return current


def _write_json(path: str, value: Dict) -> None:
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
