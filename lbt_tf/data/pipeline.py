"""tf.data input pipelines of the LBT splits.

Every source is first decoded to (uint8 image [H,W,3], uint8 train-id label [H,W]) at
(image_height, image_width) -- synthetic scenes are rendered at that size and cached in memory;
files are decoded with tf.io and resized (image bilinear, label nearest; input-pipeline resizes,
nothing differentiates through them). Training then applies random scale, crop (labels padded
with ignore), flip and normalisation with stateless random ops seeded by (seed, element index), so
a seed gives the same batches every run; evaluation normalises the whole image.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from lbt_tf.data import cityscapes, synthetic
from lbt_tf.data.labels import MAX_RAW_ID, raw_to_train_id
from lbt_tf.errors import LABEL_OUT_OF_TABLE_MESSAGE, NOT_AN_IMAGE_MESSAGE, DataError

AUTOTUNE = tf.data.AUTOTUNE
_OUT_OF_TABLE = -1


def make_dataset(data_config, source, training: bool, seed: int = 0, repeat: bool = False):
    """Batched `(images float32 [B,H,W,3], labels int32 [B,H,W])`, or images only when
    `source.labeled` is False. Training batches are crops of (crop_height, crop_width) and drop
    the remainder (static shapes); evaluation batches are whole images."""
    d = data_config
    batch_size = d.batch_size if training else d.eval_batch_size
    if len(source) == 0:
        raise DataError(f"split {source.name!r} is empty")
    if training and len(source) < batch_size:
        raise DataError(f"split {source.name!r} has {len(source)} images, fewer than "
                        f"--batch_size={batch_size} (training drops incomplete batches)")
    # Generators and file readers hide their length from tf.data; Keras needs it to end an
    # evaluation pass without warning that the input "ran out of data".
    dataset = decoded_dataset(d, source).apply(
        tf.data.experimental.assert_cardinality(len(source)))
    if training:
        dataset = dataset.shuffle(min(len(source), max(d.shuffle_buffer, 1)), seed=seed,
                                  reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.enumerate()
    if training:
        prepare = lambda index, example: _augment(d, example, tf.stack(
            [tf.cast(seed, tf.int64), index]), source.labeled)
    else:
        prepare = lambda index, example: _whole_image(d, example, source.labeled)
    # Evaluation keeps the key order always; training may trade order for speed unless
    # --deterministic (the content of each element is seeded either way).
    in_order = bool(d.deterministic) or not training
    dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE, deterministic=in_order)
    dataset = dataset.batch(batch_size, drop_remainder=training)
    options = tf.data.Options()
    options.deterministic = in_order
    return dataset.with_options(options).prefetch(AUTOTUNE)


def make_unlabeled_dataset(data_config, source, seed: int = 0, repeat: bool = True):
    """Training-style crops of D_u, images only (labels are never read)."""
    import dataclasses
    return make_dataset(data_config, dataclasses.replace(source, labeled=False), True, seed,
                        repeat)


def denormalize(images, data_config):
    """Normalised float images -> uint8 RGB (for grids and exports)."""
    mean = tf.constant(data_config.mean, tf.float32)
    std = tf.constant(data_config.std, tf.float32)
    pixels = (tf.cast(images, tf.float32) * std + mean) * 255.0
    return tf.cast(tf.clip_by_value(tf.round(pixels), 0.0, 255.0), tf.uint8)


def normalize(images_uint8, data_config):
    mean = tf.constant(data_config.mean, tf.float32)
    std = tf.constant(data_config.std, tf.float32)
    return (tf.cast(images_uint8, tf.float32) / 255.0 - mean) / std


# --------------------------------------------------------------------------------- decoding
def decoded_dataset(data_config, source):
    """Unbatched (image uint8 [H,W,3], label uint8 [H,W]) -- or (image,) -- at image size."""
    if source.kind == "synthetic":
        return _synthetic(data_config, source)
    if source.kind == "files":
        return _files(data_config, source)
    if source.kind == "tfds":
        return _tfds(data_config, source)
    raise DataError(f"split {source.name!r}: unknown source kind {source.kind!r}")


def _synthetic(d, source):
    height, width = d.image_height, d.image_width
    image_spec = tf.TensorSpec((height, width, 3), tf.uint8)
    label_spec = tf.TensorSpec((height, width), tf.uint8)
    keys, labeled = tuple(source.keys), source.labeled

    def generate():
        for index in keys:
            if labeled:
                yield synthetic.synthetic_example(source.seed, source.split, index, height, width,
                                                  d.ignore_label)
            else:
                yield (synthetic.synthetic_image(source.seed, source.split, index, height, width),)

    signature = (image_spec, label_spec) if labeled else (image_spec,)
    # Rendered once, then served from memory: the search reads these every step.
    return tf.data.Dataset.from_generator(generate, output_signature=signature).cache()


def _label_lookup(ignore_label):
    """256-entry table raw id -> train id; values above the table map to _OUT_OF_TABLE."""
    lookup = np.full(256, _OUT_OF_TABLE, np.int32)
    lookup[: MAX_RAW_ID + 1] = raw_to_train_id(ignore_label)
    return tf.constant(lookup)


def _resize_pair(d, image, label):
    size = (d.image_height, d.image_width)
    image = tf.image.resize(image, size, method="bilinear", antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    image.set_shape(size + (3,))
    if label is None:
        return (image,)
    label = tf.image.resize(label[..., None], size, method="nearest")[..., 0]
    label.set_shape(size)
    return image, tf.cast(label, tf.uint8)


def _map_raw_labels(raw, lookup, path):
    """Raw Cityscapes ids -> train ids, failing (naming the file) on ids outside the table."""
    train_ids = tf.gather(lookup, tf.cast(raw, tf.int32))
    check = tf.debugging.Assert(tf.reduce_all(train_ids != _OUT_OF_TABLE),
                                [LABEL_OUT_OF_TABLE_MESSAGE, path])
    with tf.control_dependencies([check]):
        return tf.identity(train_ids)


# Signatures at the start and end of a whole file: PNG (IEND chunk) and JPEG (SOI / EOI).
_PNG_HEAD, _PNG_TAIL = b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"
_JPEG_HEAD, _JPEG_TAIL = b"\xff\xd8", b"\xff\xd9"


def _read_image_file(path):
    """The file's bytes, failing (naming the file) when they are not a whole PNG or JPEG: a
    decode op's own error names no file, and --validate_files=none skipped the listing check."""
    contents = tf.io.read_file(path)
    size = tf.strings.length(contents)
    head = lambda n: tf.strings.substr(contents, 0, n)  # noqa: E731
    tail = lambda n: tf.strings.substr(contents, tf.maximum(size - n, 0), n)  # noqa: E731
    whole = tf.logical_or(
        tf.logical_and(tf.equal(head(8), _PNG_HEAD), tf.equal(tail(8), _PNG_TAIL)),
        tf.logical_and(tf.equal(head(2), _JPEG_HEAD), tf.equal(tail(2), _JPEG_TAIL)))
    check = tf.debugging.Assert(whole, [NOT_AN_IMAGE_MESSAGE, path])
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def _files(d, source):
    image_paths = [key[0] for key in source.keys]
    if not source.labeled:
        def load_image(path):
            raw = tf.io.decode_image(_read_image_file(path), channels=3, expand_animations=False)
            return _resize_pair(d, raw, None)
        return tf.data.Dataset.from_tensor_slices(image_paths).map(load_image, AUTOTUNE)
    label_paths = [key[1] for key in source.keys]
    if any(path is None for path in label_paths):
        raise DataError(f"split {source.name!r} is labeled but some images have no label file")
    lookup = _label_lookup(d.ignore_label)

    def load_pair(image_path, label_path):
        image = tf.io.decode_png(_read_image_file(image_path), channels=3)
        raw = tf.io.decode_png(_read_image_file(label_path), channels=1)[..., 0]
        return _resize_pair(d, image, _map_raw_labels(raw, lookup, label_path))

    return tf.data.Dataset.from_tensor_slices((image_paths, label_paths)).map(load_pair, AUTOTUNE)


def _tfds(d, source):
    import tensorflow_datasets as tfds
    builder = cityscapes.prepare_tfds_cityscapes(d.tfds_manual_dir, d.tfds_data_dir)
    split = cityscapes.TFDS_SPLITS[source.split]
    total = cityscapes.tfds_split_size(builder, source.split)
    wanted = np.zeros(total, bool)
    wanted[list(source.keys)] = True
    wanted = tf.constant(wanted)
    lookup = _label_lookup(d.ignore_label)
    dataset = builder.as_dataset(split=split, shuffle_files=False,
                                 read_config=tfds.ReadConfig(interleave_cycle_length=1))
    dataset = dataset.enumerate().filter(lambda index, example: wanted[index])

    def convert(index, example):
        if not source.labeled:
            return _resize_pair(d, example["image_left"], None)
        raw = example["segmentation_label"][..., 0]
        return _resize_pair(d, example["image_left"],
                            _map_raw_labels(raw, lookup, example["image_id"]))

    return dataset.map(convert, num_parallel_calls=AUTOTUNE)


# ----------------------------------------------------------------------------- augmentation
def _whole_image(d, example, labeled):
    image = normalize(example[0], d)
    image.set_shape((d.image_height, d.image_width, 3))
    if not labeled:
        return image
    label = tf.cast(example[1], tf.int32)
    label.set_shape((d.image_height, d.image_width))
    return image, label


def _augment(d, example, seed, labeled):
    """Random scale, crop (padding with mean / ignore), flip; seeds derived from `seed`."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    scale = tf.random.stateless_uniform([], seeds[0], d.scale_min, d.scale_max)
    height = tf.cast(tf.round(d.image_height * scale), tf.int32)
    width = tf.cast(tf.round(d.image_width * scale), tf.int32)
    image = tf.image.resize(normalize(example[0], d), tf.stack([height, width]), "bilinear")
    # Pad to at least the crop (image with 0 = the mean colour, labels with ignore).
    pad_h = tf.maximum(d.crop_height - height, 0)
    pad_w = tf.maximum(d.crop_width - width, 0)
    image = tf.pad(image, [[0, pad_h], [0, pad_w], [0, 0]])
    padded_h, padded_w = height + pad_h, width + pad_w
    top = tf.random.stateless_uniform([], seeds[1], 0, padded_h - d.crop_height + 1, tf.int32)
    left = tf.random.stateless_uniform([], seeds[2], 0, padded_w - d.crop_width + 1, tf.int32)
    flip = d.random_flip & (tf.random.stateless_uniform([], seeds[3]) < 0.5)

    def crop_and_flip(tensor):
        tensor = tensor[top:top + d.crop_height, left:left + d.crop_width]
        return tf.cond(flip, lambda: tf.reverse(tensor, [1]), lambda: tensor)

    image = crop_and_flip(image)
    image.set_shape((d.crop_height, d.crop_width, 3))
    if not labeled:
        return image
    label = tf.image.resize(tf.cast(example[1], tf.int32)[..., None], tf.stack([height, width]),
                            "nearest")[..., 0]
    label = tf.pad(label, [[0, pad_h], [0, pad_w]], constant_values=d.ignore_label)
    label = crop_and_flip(label)
    label.set_shape((d.crop_height, d.crop_width))
    return image, label
