"""A tiny architecture trains a few steps, evaluates, exports, reloads in a fresh process that
does not import lbt_tf and predicts the same labels as the Keras model; predict skips bad files."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lbt_tf import config as config_lib
from lbt_tf.data.pipeline import normalize
from lbt_tf.errors import DataError, LbtError
from lbt_tf.retrain import evaluate, export, network, predict, serving, trainer

_RELOAD_SCRIPT = """
import sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
signature = loaded.signatures["serving_default"]
images = np.load(sys.argv[2])
out = signature(images=tf.constant(images))
np.save(sys.argv[3], out["labels"].numpy())
assert out["labels"].dtype == tf.int32, out["labels"].dtype
assert not any(m == "lbt_tf" or m.startswith("lbt_tf.") for m in sys.modules), "lbt_tf imported"
print("reloaded", out["labels"].shape)
"""


def _uint8_images(config, count=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (count, config.data.image_height, config.data.image_width, 3),
                        dtype=np.uint8)


def test_train_writes_weights_architecture_and_finite_losses(trained):
    config, result = trained
    train_dir = network.train_dir(config)
    assert result["weights"] == os.path.join(train_dir, "model.weights.h5")
    assert os.path.isfile(result["weights"])
    saved_arch = json.load(open(os.path.join(train_dir, "arch.json")))
    assert saved_arch["candidates"] == json.load(open(config.train.arch))["candidates"]
    for name in ("loss", "ce", "aux_ce"):
        assert np.all(np.isfinite(result["history"][name])) and result["history"][name][0] > 0
    assert int(result["model"].optimizer.iterations) == config.train.steps_per_epoch
    if trainer.tensorboard_available():
        assert os.listdir(os.path.join(train_dir, "tensorboard"))


def test_evaluate_prints_table_and_writes_pngs(trained, capsys):
    config, _ = trained
    results = evaluate.run_evaluate(config)
    out = capsys.readouterr().out
    assert "mIoU" in out and "road" in out and "latency_ms=" in out and "deeplabv3" in out
    eval_dir = os.path.join(config.run_dir, "evaluate")
    for name in ("confusion_matrix.png", "predictions.png", "metrics.json"):
        assert os.path.isfile(os.path.join(eval_dir, name)), name
    confusion = np.asarray(results["confusion_matrix"])
    assert confusion.shape == (19, 19)
    # All non-ignored pixels of the 4 val images are counted once.
    assert 0 < confusion.sum() <= 4 * 32 * 64
    assert results["pixel_accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    assert 0.0 <= results["miou"] <= 1.0
    assert results["speed"]["latency_ms"] > 0 and results["student_speed"]["fps"] > 0


def test_export_reloads_in_a_fresh_process_and_predict_skips_bad_files(trained, tmp_path,
                                                                       capsys):
    config, _ = trained
    exported = export.run_export(config)
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"saved_model={exported['saved_model']}"
    assert any(l.startswith("tflite_float_miou=") and "int8_drop=" in l for l in lines)
    tfl = exported["tflite"]
    assert os.path.isfile(tfl["float_path"]) and os.path.isfile(tfl["int8_path"])
    assert tfl["int8_drop"] == pytest.approx(tfl["float_miou"] - tfl["int8_miou"])

    # Fresh process, plain TensorFlow: same labels as the Keras model's argmax.
    images = _uint8_images(config)
    np.save(tmp_path / "images.npy", images)
    subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, exported["saved_model"],
                    str(tmp_path / "images.npy"), str(tmp_path / "labels.npy")],
                   check=True, capture_output=True, timeout=300)
    reloaded_labels = np.load(tmp_path / "labels.npy")
    model, _ = network.load_trained_network(
        config, (config.data.image_height, config.data.image_width))
    keras_logits = network.logits_of(model(normalize(images, config.data), training=False))
    keras_labels = np.argmax(keras_logits, axis=-1)
    assert reloaded_labels.shape == keras_labels.shape
    np.testing.assert_array_equal(reloaded_labels, keras_labels)

    # predict: one good image of another size, one unreadable file.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(_uint8_images(config, 1, seed=1)[0, :20, :50]).save(inputs / "good.png")
    (inputs / "broken.jpg").write_bytes(b"not an image")
    predicted = predict.run_predict(config_lib.replace(
        config, **{"export.input": str(inputs), "export.output": str(tmp_path / "pred")}))
    out = capsys.readouterr().out
    assert "warning: skipping" in out and "broken.jpg" in out and "processed 1, skipped 1" in out
    assert [os.path.basename(p) for p in predicted["skipped"]] == ["broken.jpg"]
    labels_png = np.asarray(Image.open(tmp_path / "pred" / "good_labels.png"))
    assert labels_png.shape == (20, 50, 3)
    assert os.path.isfile(tmp_path / "pred" / "good_overlay.png")


def test_resume_restores_weights_optimizer_and_epoch(trained, tmp_path):
    config, first = trained
    run_dir = tmp_path / "resumed"
    shutil.copytree(config.run_dir, run_dir)
    resumed = trainer.run_train(config_lib.replace(config, run_dir=str(run_dir), resume=True,
                                                   **{"train.epochs": 2}))
    # Epoch 1 came from the backup: only epoch 2 ran, and the step count (poly lr) went on.
    assert len(resumed["history"]["loss"]) == 1
    assert int(resumed["model"].optimizer.iterations) == 2 * config.train.steps_per_epoch


def test_distillation_from_a_trained_network(trained, tmp_path):
    config, first = trained
    distilled = trainer.run_train(config_lib.replace(
        config, run_dir=str(tmp_path / "distilled"),
        **{"train.distill_from": first["weights"], "train.distill_weight": 1.0,
           "train.distill_temperature": 2.0}))
    kl = distilled["history"]["distill_kl"]
    assert np.all(np.isfinite(kl)) and kl[-1] > 0
    assert distilled["model"].teacher is not None and not distilled["model"].teacher.trainable


def test_serving_signature_rejects_wrong_dtype_and_rank(tiny_config, tmp_path):
    import keras
    inputs = keras.Input((32, 64, 3))
    model = keras.Model(inputs, {"logits": keras.layers.Conv2D(19, 1)(inputs)})
    serving.export_saved_model(model, str(tmp_path / "sm"), (32, 64), tiny_config.data)
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    signature = loaded.signatures["serving_default"]
    ok = signature(images=tf.zeros((2, 17, 23, 3), tf.uint8))
    assert ok["labels"].dtype == tf.int32 and ok["labels"].shape == (2, 17, 23)
    assert ok["probabilities"].shape == (2, 17, 23, 19)
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError), match="uint8"):
        signature(images=tf.zeros((1, 32, 64, 3), tf.float32))
    for bad_shape in [(32, 64, 3), (1, 32, 64, 4)]:
        with pytest.raises(tf.errors.InvalidArgumentError, match="images"):
            signature(images=tf.zeros(bad_shape, tf.uint8))
    with pytest.raises((TypeError, ValueError), match="images"):
        loaded.serving_default(tf.zeros((1, 32, 64, 3), tf.float32))


def test_bad_inputs_name_the_file_or_flag(tiny_config, tmp_path):
    with pytest.raises(DataError, match="model.weights.h5"):
        evaluate.run_evaluate(tiny_config)
    with pytest.raises(LbtError, match="--input"):
        predict.run_predict(tiny_config)
    with pytest.raises(DataError, match="saved_model.pb"):
        predict.run_predict(config_lib.replace(tiny_config,
                                               **{"export.input": str(tmp_path)}))
    with pytest.raises(LbtError, match="--arch"):
        trainer.run_train(config_lib.replace(tiny_config,
                                             **{"train.arch": str(tmp_path / "none.json")}))
    with pytest.raises(LbtError, match="--distill_from"):
        trainer.run_train(config_lib.replace(tiny_config, **{"train.distill_weight": 1.0}))
