import os

import numpy as np
import pytest
import tensorflow as tf
from fake_cityscapes import HEIGHT, WIDTH, all_raw_ids_label, write_example

from lbt_tf.data import cityscapes
from lbt_tf.data.pipeline import make_dataset
from lbt_tf.data.splits import Source
from lbt_tf.errors import DataError
from test_data_labels import OFFICIAL_ID_TO_TRAIN_ID


def test_lists_sorted_pairs_with_official_names(cityscapes_root):
    pairs = cityscapes.list_cityscapes_pairs(cityscapes_root, "train")
    assert len(pairs) == 8
    assert pairs == sorted(pairs)
    first_image, first_label = pairs[0]
    assert first_image.endswith(os.path.join("leftImg8bit", "train", "aachen",
                                             "aachen_000000_000019_leftImg8bit.png"))
    assert first_label.endswith(os.path.join("gtFine", "train", "aachen",
                                             "aachen_000000_000019_gtFine_labelIds.png"))
    assert len(cityscapes.list_cityscapes_images(cityscapes_root, "test")) == 2


def test_decoded_labels_map_every_raw_id(cityscapes_config):
    pairs = cityscapes.list_cityscapes_pairs(cityscapes_config.data_dir, "val")
    source = Source("val", "files", tuple(pairs), True, "val")
    images, labels = next(iter(make_dataset(cityscapes_config, source, training=False)))
    assert images.shape == (2, HEIGHT, WIDTH, 3) and labels.dtype == tf.int32
    for i, frame in enumerate((19, 20)):  # sorted: frame 19, then 20
        raw = all_raw_ids_label(frame)
        assert set(np.unique(raw)) == set(range(34))
        expected = np.vectorize(lambda r: 255 if OFFICIAL_ID_TO_TRAIN_ID[r] == 255
                                else OFFICIAL_ID_TO_TRAIN_ID[r])(raw)
        np.testing.assert_array_equal(labels[i].numpy(), expected)


def test_missing_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        cityscapes.list_cityscapes_pairs(str(tmp_path / "nowhere"), "train")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        cityscapes.list_cityscapes_pairs(str(empty), "train")
    (empty / "leftImg8bit" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="leftImg8bit"):
        cityscapes.list_cityscapes_pairs(str(empty), "train")


def test_image_without_label(tmp_path):
    root = str(tmp_path)
    write_example(root, "train", "aachen", 0, 1)
    write_example(root, "train", "aachen", 0, 2, label=False)
    with pytest.raises(DataError, match="aachen_000000_000002_gtFine_labelIds.png"):
        cityscapes.list_cityscapes_pairs(root, "train")


def test_corrupt_image(tmp_path):
    root = str(tmp_path)
    image_path, _ = write_example(root, "train", "aachen", 0, 1)
    with open(image_path, "wb") as broken:
        broken.write(b"\x89PNG not really a png")
    with pytest.raises(DataError, match="aachen_000000_000001_leftImg8bit.png"):
        cityscapes.list_cityscapes_pairs(root, "train")


def test_truncated_image_found_by_full_validation(tmp_path):
    root = str(tmp_path)
    image_path, _ = write_example(root, "train", "aachen", 0, 1)
    data = open(image_path, "rb").read()
    with open(image_path, "wb") as truncated:
        truncated.write(data[: len(data) // 2])
    with pytest.raises(DataError, match="leftImg8bit.png"):
        cityscapes.list_cityscapes_pairs(root, "train", validate="full")


def test_size_mismatch(tmp_path):
    root = str(tmp_path)
    write_example(root, "train", "aachen", 0, 1, image_size=(HEIGHT, WIDTH + 2))
    with pytest.raises(DataError, match="size mismatch.*aachen_000000_000001"):
        cityscapes.list_cityscapes_pairs(root, "train")


@pytest.mark.parametrize("validate", ["header", "full"])
def test_label_id_outside_table_is_found_by_the_listing(tmp_path, validate):
    root = str(tmp_path)
    write_example(root, "train", "aachen", 0, 0)
    bad = all_raw_ids_label()
    bad[0, 0] = 40
    write_example(root, "train", "aachen", 0, 1, label=bad)
    with pytest.raises(DataError, match=r"aachen_000000_000001_gtFine_labelIds.png: label ids "
                                        r"\[40\] are outside the Cityscapes table: allowed "
                                        r"label ids 0..33"):
        cityscapes.list_cityscapes_pairs(root, "train", validate=validate)


def test_label_id_outside_table_is_named_at_decode_time_without_listing_checks(
        tmp_path, cityscapes_config):
    root = str(tmp_path)
    bad = all_raw_ids_label()
    bad[0, 0] = 40
    write_example(root, "train", "aachen", 0, 1, label=bad)
    pairs = cityscapes.list_cityscapes_pairs(root, "train", validate="none")
    source = Source("train", "files", tuple(pairs), True, "train")
    with pytest.raises(tf.errors.InvalidArgumentError, match="aachen_000000_000001"):
        next(iter(make_dataset(cityscapes_config, source, training=False)))


def test_unlabeled_folder(tmp_path):
    with pytest.raises(DataError, match="unlabeled_dir"):
        cityscapes.list_image_folder(str(tmp_path / "none"))
    (tmp_path / "x.txt").write_text("no images")
    with pytest.raises(DataError, match="no .png/.jpg"):
        cityscapes.list_image_folder(str(tmp_path))


def test_tfds_missing_manual_dir_names_it(tmp_path):
    missing = str(tmp_path / "no_zips_here")
    with pytest.raises(DataError, match="no_zips_here"):
        cityscapes.prepare_tfds_cityscapes(missing, str(tmp_path / "tfds"))


def test_tfds_manual_dir_without_zips(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(DataError, match="leftImg8bit_trainvaltest.zip"):
        cityscapes.prepare_tfds_cityscapes(str(manual), str(tmp_path / "tfds"))


def test_main_search_refuses_a_label_out_of_table_before_any_model(tmp_path):
    """Default --validate_files=header: the listing (before any model is built or latency
    table measured) names the file, the id and the allowed range; exit 2; no search output."""
    import subprocess
    import sys
    root = str(tmp_path / "cityscapes")
    bad = all_raw_ids_label()
    bad[5, 7] = 40
    for frame in range(8):
        write_example(root, "train", "aachen", 0, frame, label=bad if frame == 5 else None)
    write_example(root, "val", "frankfurt", 0, 0)
    write_example(root, "test", "berlin", 0, 0, label=False)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "lbt_tf.main", "--mode=search", "--data_source=cityscapes",
         f"--data_dir={root}", "--image_height=32", "--image_width=64", "--crop_height=32",
         "--crop_width=64", "--layers=4", "--base_width=2", "--verbosity=0",
         f"--run_dir={run_dir}"],
        cwd=repo, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"error: {root}/gtFine/train/aachen/aachen_000000_000005_gtFine_labelIds.png:"
                    " label ids [40] are outside the Cityscapes table: allowed label ids 0..33 "
                    "(*_gtFine_labelIds.png holds label ids, not train ids)"), last
    # found by the listing, not by a training step after the models were built
    assert "Traceback" not in result.stderr and "rendezvous" not in result.stderr
    assert "latency table" not in result.stderr + result.stdout
    assert not run_dir.exists() or not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("damage", ["truncated", "not_png", "flipped_byte"])
def test_undecodable_file_is_named_without_listing_checks(tmp_path, cityscapes_config, damage):
    """--validate_files=none: the file is still named when decoding fails (in the graph for a
    truncated / non-PNG file, by main's re-check for damage inside a whole-looking file)."""
    import dataclasses

    from lbt_tf import config as config_lib
    from lbt_tf.main import _data_error_from_graph
    root = str(tmp_path / "cityscapes")
    for split, city in (("train", "aachen"), ("val", "frankfurt"), ("test", "berlin")):
        for frame in range(4):
            paths = write_example(root, split, city, 0, frame)
    image_path = os.path.join(root, "leftImg8bit", "val", "frankfurt",
                              "frankfurt_000000_000001_leftImg8bit.png")
    data = open(image_path, "rb").read()
    damaged = {"truncated": data[: len(data) // 2], "not_png": b"<html>not found</html>",
               "flipped_byte": data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]}[damage]
    with open(image_path, "wb") as f:
        f.write(damaged)
    data_config = dataclasses.replace(cityscapes_config, data_dir=root, validate_files="none")
    pairs = cityscapes.list_cityscapes_pairs(root, "val", validate="none")
    source = Source("val", "files", tuple(pairs), True, "val")
    with pytest.raises(tf.errors.InvalidArgumentError) as raised:
        for _ in make_dataset(data_config, source, training=False):
            pass
    config = config_lib.replace(config_lib.Config(), data=data_config)
    message = _data_error_from_graph(raised.value, config)
    assert message is not None and "frankfurt_000000_000001_leftImg8bit.png" in message, message
    del paths
