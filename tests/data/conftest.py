"""Fixtures of the data tests: a fake Cityscapes tree and its DataConfig."""
import pytest
from fake_cityscapes import CITIES, HEIGHT, WIDTH, write_example

from lbt_tf.config import DataConfig


@pytest.fixture
def cityscapes_root(tmp_path):
    root = str(tmp_path / "cityscapes")
    for split, cities in CITIES.items():
        for c, city in enumerate(cities):
            for frame in range(4 if split == "train" else 2):
                write_example(root, split, city, c, frame + 19)
    return root


@pytest.fixture
def cityscapes_config(cityscapes_root):
    return DataConfig(source="cityscapes", data_dir=cityscapes_root, image_height=HEIGHT,
                      image_width=WIDTH, crop_height=HEIGHT, crop_width=WIDTH, batch_size=2,
                      eval_batch_size=2, deterministic=True)
