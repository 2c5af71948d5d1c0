"""The Cityscapes label table against the official cityscapesScripts values, written out here
independently as id -> trainId pairs and the 19 training colours."""
import numpy as np
import pytest

from lbt_tf.data import labels

# cityscapesScripts helpers/labels.py: id -> trainId.
OFFICIAL_ID_TO_TRAIN_ID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255, 7: 0, 8: 1, 9: 255, 10: 255, 11: 2,
    12: 3, 13: 4, 14: 255, 15: 255, 16: 255, 17: 5, 18: 255, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18, -1: -1}
OFFICIAL_TRAIN_COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32)]
OFFICIAL_TRAIN_NAMES = ["road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
                        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
                        "truck", "bus", "train", "motorcycle", "bicycle"]


def test_table_has_every_official_id_with_its_train_id():
    table = {label.id: label.train_id for label in labels.LABELS}
    assert table == OFFICIAL_ID_TO_TRAIN_ID
    assert len(labels.LABELS) == 35


@pytest.mark.parametrize("ignore_label", [255, 19])
def test_raw_to_train_id_maps_every_raw_id(ignore_label):
    lookup = labels.raw_to_train_id(ignore_label)
    assert lookup.shape == (34,)
    for raw_id, train_id in OFFICIAL_ID_TO_TRAIN_ID.items():
        expected = ignore_label if train_id in (255, -1) else train_id
        assert labels.train_id_of(raw_id, ignore_label) == expected
        if raw_id >= 0:
            assert lookup[raw_id] == expected, raw_id


def test_palette_and_names_in_train_id_order():
    assert list(labels.TRAIN_ID_NAMES) == OFFICIAL_TRAIN_NAMES
    np.testing.assert_array_equal(labels.CITYSCAPES_PALETTE, np.array(OFFICIAL_TRAIN_COLORS))
    assert labels.CITYSCAPES_PALETTE.dtype == np.uint8
