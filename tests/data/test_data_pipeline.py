import numpy as np
import pytest
import tensorflow as tf

from lbt_tf.config import DataConfig
from lbt_tf.data import Source, denormalize, make_dataset, make_splits
from lbt_tf.data import synthetic
from lbt_tf.data.pipeline import make_unlabeled_dataset
from lbt_tf.errors import DataError

H, W = 32, 64


def config(**changes):
    base = dict(image_height=H, image_width=W, crop_height=32, crop_width=32, batch_size=2,
                eval_batch_size=3, synthetic_train_size=8, synthetic_val_size=4,
                synthetic_test_size=4, deterministic=True)
    base.update(changes)
    return DataConfig(**base)


def source(n=4, split="train", labeled=True):
    return Source(split, "synthetic", tuple(range(n)), labeled, split)


def test_training_batches_static_shapes_and_dtypes():
    dataset = make_dataset(config(), source(5), training=True)
    images_spec, labels_spec = dataset.element_spec
    assert images_spec.shape == (2, 32, 32, 3) and images_spec.dtype == tf.float32
    assert labels_spec.shape == (2, 32, 32) and labels_spec.dtype == tf.int32
    assert len(list(dataset)) == 2  # 5 images, remainder dropped


def test_eval_whole_images_normalised_and_denormalize_inverts():
    cfg = config()
    batches = list(make_dataset(cfg, source(4, "val"), training=False))
    assert [b[0].shape[0] for b in batches] == [3, 1]  # evaluation keeps the remainder
    images, labels = batches[0]
    assert images.shape == (3, H, W, 3) and labels.shape == (3, H, W)
    expected_image, expected_label = synthetic.synthetic_example(0, "val", 0, H, W)
    np.testing.assert_array_equal(denormalize(images, cfg)[0].numpy(), expected_image)
    np.testing.assert_array_equal(labels[0].numpy(), expected_label)
    mean = (expected_image / 255.0 - np.array(cfg.mean)) / np.array(cfg.std)
    np.testing.assert_allclose(images[0].numpy(), mean, atol=1e-5)


def test_same_seed_same_batches_other_seed_differs():
    def first_batches(seed):
        dataset = make_dataset(config(), source(8), training=True, seed=seed, repeat=True)
        return [b[0].numpy() for b in dataset.take(5)]
    a, b, c = first_batches(1), first_batches(1), first_batches(2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_repeat_gives_different_augmentation_each_epoch():
    dataset = make_dataset(config(), source(2), training=True, repeat=True)
    first, second = [b[0].numpy() for b in dataset.take(2)]
    assert not np.array_equal(first, second)


def test_augmented_labels_only_contain_input_values_or_ignore():
    cfg = config(scale_min=0.6, scale_max=1.7)
    inputs = set()
    for index in range(8):
        inputs |= set(np.unique(synthetic.synthetic_example(0, "train", index, H, W)[1]).tolist())
    for _, labels in make_dataset(cfg, source(8), training=True, repeat=True).take(8):
        assert set(np.unique(labels.numpy()).tolist()) <= inputs | {255}


def test_small_scale_pads_labels_with_ignore_and_images_with_mean():
    cfg = config(scale_min=0.5, scale_max=0.5, crop_height=32, crop_width=64, random_flip=False)
    images, labels = next(iter(make_dataset(cfg, source(2), training=True)))
    labels, images = labels.numpy(), images.numpy()
    # A 16x32 scaled image sits in the crop; the rest is padding.
    assert (labels == 255).mean() >= 0.75 - 1e-6
    padded = labels == 255
    np.testing.assert_array_equal(images[padded & (np.arange(32)[None, :, None] >= 16)], 0.0)


def test_flip_mirrors_labels():
    cfg = config(scale_min=1.0, scale_max=1.0, crop_height=H, crop_width=W)
    original = synthetic.synthetic_example(0, "train", 0, H, W)[1]
    seen = set()
    for seed in range(6):
        labels = next(iter(make_dataset(cfg, source(2), training=True, seed=seed)))[1].numpy()
        for label in labels:
            if np.array_equal(label, original):
                seen.add("same")
            elif np.array_equal(label, original[:, ::-1]):
                seen.add("flipped")
    assert seen == {"same", "flipped"}


def test_unlabeled_sources_yield_images_only():
    splits = make_splits(config(), 0)
    dataset = make_dataset(config(), splits.unlabeled, training=True)
    assert isinstance(dataset.element_spec, tf.TensorSpec)
    assert dataset.element_spec.shape == (2, 32, 32, 3)
    labeled_made_unlabeled = make_unlabeled_dataset(config(), source(4), repeat=False)
    assert isinstance(labeled_made_unlabeled.element_spec, tf.TensorSpec)


def test_too_small_split_for_batch():
    with pytest.raises(DataError, match="teacher_val.*batch_size"):
        make_dataset(config(batch_size=4), Source("teacher_val", "synthetic", (0, 1), True),
                     training=True)


def test_files_pipeline_resizes_labels_nearest(cityscapes_config):
    from dataclasses import replace
    from fake_cityscapes import HEIGHT, WIDTH
    cfg = replace(cityscapes_config, image_height=HEIGHT * 2, image_width=WIDTH // 2)
    splits = make_splits(cfg, 0)
    images, labels = next(iter(make_dataset(cfg, splits.val, training=False)))
    assert images.shape == (2, HEIGHT * 2, WIDTH // 2, 3)
    valid = set(range(19)) | {255}
    assert set(np.unique(labels.numpy()).tolist()) <= valid


def test_evaluation_keeps_key_order_even_when_not_deterministic():
    cfg = config(deterministic=False, eval_batch_size=2)
    labels = np.concatenate([b[1].numpy() for b in make_dataset(cfg, source(4, "val"), False)])
    for index in range(4):
        np.testing.assert_array_equal(labels[index],
                                      synthetic.synthetic_example(0, "val", index, H, W)[1])
