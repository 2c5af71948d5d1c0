import numpy as np
from PIL import Image

from lbt_tf.config import Config, DataConfig
from lbt_tf.data.labels import CITYSCAPES_PALETTE
from lbt_tf.data.visualize import colorize, run_sample_grid, save_grid


def test_colorize_uses_palette_and_blackens_ignore():
    labels = np.array([[0, 13, 255], [18, 2, 19]])
    colors = colorize(labels)
    assert colors.dtype == np.uint8 and colors.shape == (2, 3, 3)
    np.testing.assert_array_equal(colors[0, 0], (128, 64, 128))
    np.testing.assert_array_equal(colors[0, 1], (0, 0, 142))
    np.testing.assert_array_equal(colors[1, 0], (119, 11, 32))
    np.testing.assert_array_equal(colors[0, 2], (0, 0, 0))
    np.testing.assert_array_equal(colors[1, 2], (0, 0, 0))  # outside a 19-colour palette
    np.testing.assert_array_equal(colorize(labels, CITYSCAPES_PALETTE[:3])[1, 1], (70, 70, 70))


def test_save_grid_writes_png(tmp_path):
    image = np.zeros((8, 16, 3), np.uint8)
    path = save_grid(str(tmp_path / "sub" / "grid.png"), [[image, image], [image, None]],
                     ["a", "b"])
    assert Image.open(path).size[0] > 0


def test_run_sample_grid(tmp_path, capsys):
    data = DataConfig(image_height=32, image_width=64, synthetic_train_size=8,
                      synthetic_val_size=2, synthetic_test_size=4)
    path = run_sample_grid(Config(run_dir=str(tmp_path), data=data))
    assert path == str(tmp_path / "samples.png")
    assert Image.open(path).size[1] > 7 * 50  # one row per image, 7 splits x 2 images
    assert "samples.png" in capsys.readouterr().out


def test_run_sample_grid_cityscapes_files(tmp_path, cityscapes_config):
    path = run_sample_grid(Config(run_dir=str(tmp_path), data=cityscapes_config))
    assert Image.open(path).size[0] > 0
