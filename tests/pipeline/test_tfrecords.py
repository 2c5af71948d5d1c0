"""example_gen's library function: the LBT splits as TFRecords, schema and statistics."""
import dataclasses
import json

import numpy as np
import pytest

from lbt_tf import config as config_lib
from lbt_tf.config import Config
from lbt_tf.data import denormalize, make_dataset, make_splits, tfrecords
from lbt_tf.errors import DataError

TINY = {"data.image_height": 32, "data.image_width": 64, "data.crop_height": 32,
        "data.crop_width": 64, "data.synthetic_train_size": 12, "data.synthetic_val_size": 3,
        "data.synthetic_test_size": 6, "data.num_classes": 19, "data.eval_batch_size": 2}


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    config = config_lib.replace(Config(), seed=3, **TINY)
    out = tmp_path_factory.mktemp("examples")
    return config, str(out), tfrecords.write_splits(config, str(out))


def test_every_split_round_trips(written):
    config, out, statistics = written
    splits = make_splits(config.data, config.seed)
    deterministic = dataclasses.replace(config.data, deterministic=True)
    for name in tfrecords.SPLIT_NAMES:
        source = getattr(splits, name)
        expected_images, expected_labels = [], []
        for batch in make_dataset(deterministic, source, training=False):
            images = batch[0] if isinstance(batch, tuple) else batch
            expected_images.extend(np.asarray(denormalize(images, config.data)))
            if isinstance(batch, tuple):
                expected_labels.extend(np.asarray(batch[1]))
        records = list(tfrecords.read_split(out, name).as_numpy_iterator())
        assert len(records) == len(source) == statistics["splits"][name]["num_examples"]
        assert [r["index"] for r in records] == list(range(len(source)))
        for record, image in zip(records, expected_images):
            assert record["image"].shape == (32, 64, 3)
            np.testing.assert_array_equal(record["image"], image)
        assert ("label" in records[0]) == (name != "unlabeled")
        for record, label in zip(records, expected_labels):
            np.testing.assert_array_equal(record["label"], label)


def test_statistics_count_class_pixels(written):
    config, out, statistics = written
    for name in ("teacher_train", "val"):
        labels = np.stack([r["label"] for r in tfrecords.read_split(out, name)
                           .as_numpy_iterator()])
        stats = statistics["splits"][name]
        valid = labels[labels != 255]
        assert stats["class_pixels"] == np.bincount(valid, minlength=19).tolist()
        assert stats["ignored_fraction"] == pytest.approx((labels == 255).mean(), abs=1e-6)
        assert sum(stats["class_frequency"]) + stats["ignored_fraction"] == pytest.approx(1, 1e-4)
    assert statistics["splits"]["unlabeled"]["class_pixels"] is None
    on_disk = json.load(open(f"{out}/{tfrecords.STATISTICS_NAME}"))
    assert on_disk == json.loads(json.dumps(statistics))
    schema = json.load(open(f"{out}/{tfrecords.SCHEMA_NAME}"))
    assert schema["features"]["image"]["shape"] == [32, 64, 3]
    assert schema["features"]["label"]["domain"] == {"min": 0, "max": 18, "ignore": 255}


def test_check_same_splits(written):
    config, out, statistics = written
    assert tfrecords.check_same_splits(config, out) == statistics["fingerprint"]
    with pytest.raises(DataError, match="--seed"):
        tfrecords.check_same_splits(config_lib.replace(config, seed=4), out)


def test_read_split_names_missing_file(tmp_path):
    with pytest.raises(DataError, match="teacher_train.tfrecord"):
        tfrecords.read_split(str(tmp_path), "teacher_train")
