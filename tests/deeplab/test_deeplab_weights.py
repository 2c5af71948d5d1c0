"""Student weights: our .weights.h5 round trip, Keras' ResNet50 legacy .h5 with conv-bias folding
(checked against keras.applications.ResNet50 features), and clear errors on bad files."""
import dataclasses

import h5py
import keras
import numpy as np
import pytest

from lbt_tf.config import StudentConfig
from lbt_tf.errors import LbtError, WeightsError
from lbt_tf.models.deeplab import build_student, load_pretrained
from lbt_tf.models.deeplab.resnet import resnet_backbone
from lbt_tf.models.deeplab.weights import CAFFE_MEAN_BGR

TINY = StudentConfig(blocks_per_stage=(1, 1, 1, 1), base_width=8, aspp_channels=16)


def write_keras_legacy_h5(model, path):
    """Writes `model` the way Keras' downloaded resnet50 ..._notop.h5 is laid out (Keras 2 HDF5):
    root attrs layer_names/backend/keras_version; group per layer with attr weight_names such as
    'conv1_conv/kernel:0', datasets at <layer>/<weight_name>."""
    with h5py.File(path, "w") as h5file:
        h5file.attrs["layer_names"] = [layer.name.encode("utf8") for layer in model.layers]
        h5file.attrs["backend"] = b"tensorflow"
        h5file.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            group = h5file.create_group(layer.name)
            names = [f"{layer.name}/{weight.name}:0".encode("utf8") for weight in layer.weights]
            group.attrs["weight_names"] = names
            for name, weight in zip(names, layer.weights):
                group.create_dataset(name.decode("utf8"), data=keras.ops.convert_to_numpy(weight))


@pytest.fixture(scope="module")
def keras_resnet50_file(tmp_path_factory):
    """Keras ResNet50 (no download) with random biases and BN statistics, saved in that layout."""
    keras.utils.set_random_seed(0)
    reference = keras.applications.ResNet50(weights=None, include_top=False,
                                            input_shape=(64, 64, 3))
    rng = np.random.default_rng(0)
    for layer in reference.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0.0, 0.5, layer.bias.shape))
        elif isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.5, n), rng.uniform(0.5, 2.0, n)])
    folder = tmp_path_factory.mktemp("keras")
    path = str(folder / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5")
    write_keras_legacy_h5(reference, path)
    return reference, path


def test_legacy_layout_is_what_keras_itself_loads(keras_resnet50_file):
    """Our test file is a genuine Keras legacy .h5: Keras' own loader reads it back exactly."""
    reference, path = keras_resnet50_file
    copy = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(64, 64, 3))
    copy.load_weights(path)
    for a, b in zip(reference.weights, copy.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def _our_backbone_os32(input_shape=(64, 64, 3)):
    inputs = keras.Input(input_shape)
    stage5 = resnet_backbone(inputs, (3, 4, 6, 3), 64, output_stride=32)[-1]
    return keras.Model(inputs, stage5)


def test_keras_resnet50_weights_fold_biases_into_bn(keras_resnet50_file):
    reference, path = keras_resnet50_file
    ours = _our_backbone_os32()
    load_pretrained(ours, path)
    images = np.random.default_rng(1).normal(0, 50, (2, 64, 64, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(reference(images, training=False))
    got = keras.ops.convert_to_numpy(ours(images, training=False))
    assert np.abs(expected).max() > 1.0  # a real comparison, not of zeros
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())
    conv = ours.get_layer("conv2_block1_1_conv")
    assert not conv.use_bias
    np.testing.assert_allclose(
        ours.get_layer("conv2_block1_1_bn").moving_mean.numpy(),
        reference.get_layer("conv2_block1_1_bn").moving_mean.numpy()
        - reference.get_layer("conv2_block1_1_conv").bias.numpy(), rtol=1e-6, atol=1e-6)


def test_input_normalization_folded_into_conv1(keras_resnet50_file):
    """Our RGB (x - mean) / std input == Keras' caffe (BGR, 0..255, minus mean pixel) input.

    With mean = caffe mean pixel / 255, zero padding means the same in both, so the fold is exact
    everywhere (otherwise it differs only where conv1 reads padding)."""
    reference, path = keras_resnet50_file
    mean = CAFFE_MEAN_BGR[::-1] / 255.0
    std = np.array([0.229, 0.224, 0.225])
    ours = _our_backbone_os32()
    load_pretrained(ours, path, input_mean=mean, input_std=std)
    rgb = np.random.default_rng(2).uniform(0, 1, (2, 64, 64, 3))
    normalized = ((rgb - mean) / std).astype("float32")
    caffe = (255.0 * rgb[..., ::-1] - CAFFE_MEAN_BGR).astype("float32")
    expected = keras.ops.convert_to_numpy(reference(caffe, training=False))
    got = keras.ops.convert_to_numpy(ours(normalized, training=False))
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_weights_round_trip_into_dilated_model(tmp_path):
    source = build_student(dataclasses.replace(TINY, output_stride=16), 4, (32, 64, 3))
    path = str(tmp_path / "student.weights.h5")
    source.save_weights(path)
    target = build_student(TINY, 4, (48, 40, 3))  # OS 8: more dilation, other input size
    assert target.get_layer("conv5_block1_2_conv").dilation_rate == (2, 2)
    assert source.get_layer("conv5_block1_2_conv").dilation_rate == (1, 1)
    kernel = target.get_layer("aspp_b1_conv").kernel
    assert not np.array_equal(kernel.numpy(), source.get_layer("aspp_b1_conv").kernel.numpy())
    load_pretrained(target, path)
    assert [layer.name for layer in source.layers] == [layer.name for layer in target.layers]
    compared = 0
    for source_layer, target_layer in zip(source.layers, target.layers):
        for a, b in zip(source_layer.weights, target_layer.weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(a),
                                          keras.ops.convert_to_numpy(b))
            compared += 1
    assert compared == len(source.weights) > 0


def test_errors_name_the_file(tmp_path, keras_resnet50_file):
    model = build_student(TINY, 4, (32, 64, 3))
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(WeightsError, match="nope.h5"):
        load_pretrained(model, missing)
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(WeightsError, match="text.h5"):
        load_pretrained(model, str(text))
    empty = str(tmp_path / "empty.h5")
    with h5py.File(empty, "w") as h5file:
        h5file.create_group("something")
    with pytest.raises(WeightsError, match="empty.h5.*layer_names"):
        load_pretrained(model, empty)
    # Full ResNet-50 file into the tiny backbone: layers missing from the model.
    _, resnet_path = keras_resnet50_file
    with pytest.raises(WeightsError, match="notop.h5.*not in the model"):
        load_pretrained(model, resnet_path)
    # Our own weights of a model with another class count.
    other = build_student(TINY, 6, (32, 64, 3))
    other_path = str(tmp_path / "six.weights.h5")
    other.save_weights(other_path)
    with pytest.raises(LbtError, match="six.weights.h5"):
        load_pretrained(model, other_path)


def test_width_mismatch_is_reported(tmp_path, keras_resnet50_file):
    _, resnet_path = keras_resnet50_file
    inputs = keras.Input((32, 32, 3))
    narrow = keras.Model(inputs, resnet_backbone(inputs, (3, 4, 6, 3), 32, 32)[-1])
    with pytest.raises(WeightsError, match="conv1_conv.*shapes"):
        load_pretrained(narrow, resnet_path)


def test_build_student_from_config_loads_weights(tmp_path):
    from lbt_tf.config import Config, replace
    from lbt_tf.models.deeplab import build_student_from_config
    source = build_student(TINY, 4, (32, 64, 3))
    path = str(tmp_path / "ours.weights.h5")
    source.save_weights(path)
    config = replace(Config(), **{"student.blocks_per_stage": (1, 1, 1, 1),
                                  "student.base_width": 8, "student.aspp_channels": 16,
                                  "student.pretrained_weights": path, "data.num_classes": 4,
                                  "data.crop_height": 32, "data.crop_width": 64})
    model = build_student_from_config(config)
    assert model.input_shape == (None, 32, 64, 3)
    images = np.random.default_rng(4).normal(size=(1, 32, 64, 3)).astype("float32")
    np.testing.assert_allclose(model(images)["logits"], source(images)["logits"], atol=1e-5)
    bad = replace(config, **{"student.pretrained_weights": str(tmp_path / "missing.weights.h5")})
    with pytest.raises(WeightsError, match="--student_weights=.*missing.weights.h5"):
        build_student_from_config(bad)


def test_keras_model_file_round_trip(tmp_path):
    """The custom resize/broadcast layers serialise: a whole-model .keras save reloads equal."""
    model = build_student(TINY, 3, (33, 65, 3))
    path = str(tmp_path / "student.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    images = np.random.default_rng(5).normal(size=(1, 33, 65, 3)).astype("float32")
    for key in ("logits", "aux_logits"):
        np.testing.assert_allclose(reloaded(images)[key], model(images)[key], atol=1e-5)
