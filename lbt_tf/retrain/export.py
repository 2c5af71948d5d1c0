"""`--mode=export`: the retrained network as a SavedModel (serving signature `serving_default`:
uint8 `images` [B, H, W, 3] of any size -> int32 `labels` [B, H, W]) and as float / int8 TFLite
models, whose mIoU on a few val images is printed. Ends with the line `saved_model=<dir>`.
"""
from __future__ import annotations

import os


from lbt_tf.config import Config, ConfigError
from lbt_tf.retrain import network as network_lib
from lbt_tf.retrain import serving, tflite_export


def export_dir(config: Config) -> str:
    return config.export.export_dir or os.path.join(config.run_dir, "export")


def _unbatched_images(config: Config, sources, count: int, with_labels: bool):
    """Up to `count` (image, label) pairs, whole images at the network's size, in order."""
    from lbt_tf import data as data_lib
    pairs = []
    for source in sources:
        for images, labels in data_lib.make_dataset(config.data, source, training=False):
            for image, label in zip(images.numpy(), labels.numpy()):
                pairs.append((image, label) if with_labels else image)
                if len(pairs) >= count:
                    return pairs
    return pairs


def tflite_miou(config: Config, runner, samples) -> float:
    from lbt_tf.metrics import StreamingMeanIoU
    metric = StreamingMeanIoU(config.data.num_classes, config.data.ignore_label)
    for image, label in samples:
        metric.update_state(label[None], runner.labels(image)[None])
    return float(metric.result())


def export_tflite(config: Config, model, out_dir: str) -> dict:
    """Writes model_float.tflite (and model_int8.tflite); returns paths and their val mIoU."""
    from lbt_tf import data as data_lib
    from lbt_tf.retrain.trainer import train_source
    e = config.export
    input_hw = (config.data.image_height, config.data.image_width)
    splits = data_lib.make_splits(config.data, config.seed)
    val_samples = _unbatched_images(config, [splits.val], e.tflite_eval_images, True)
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    float_bytes = tflite_export.convert_float(model, input_hw)
    results["float_path"] = os.path.join(out_dir, "model_float.tflite")
    with open(results["float_path"], "wb") as f:
        f.write(float_bytes)
    results["float_miou"] = tflite_miou(config, tflite_export.TfliteRunner(float_bytes),
                                        val_samples)
    if e.int8:
        if e.calibration_images <= 0:
            raise ConfigError(f"--calibration_images must be positive for --int8, got "
                              f"{e.calibration_images}")
        calibration = _unbatched_images(config, [train_source(splits)], e.calibration_images,
                                        False)
        int8_bytes, kind = tflite_export.convert_int8(model, input_hw, calibration)
        results["int8_path"] = os.path.join(out_dir, "model_int8.tflite")
        with open(results["int8_path"], "wb") as f:
            f.write(int8_bytes)
        results["int8_kind"] = kind
        results["int8_miou"] = tflite_miou(config, tflite_export.TfliteRunner(int8_bytes),
                                           val_samples)
        results["int8_drop"] = results["float_miou"] - results["int8_miou"]
    results["eval_images"] = len(val_samples)
    return results


def run_export(config: Config) -> dict:
    """Exports `<run_dir>/train/`; returns {"saved_model", "tflite"?}."""
    input_hw = (config.data.image_height, config.data.image_width)
    model, _ = network_lib.load_trained_network(config, input_hw)
    target = export_dir(config)
    serving.export_saved_model(model, target, input_hw, config.data,
                               probabilities=config.export.serving_probabilities)
    results = {"saved_model": target}
    if config.export.tflite:
        tfl = export_tflite(config, model, os.path.join(config.run_dir, "tflite"))
        results["tflite"] = tfl
        line = f"tflite_float_miou={tfl['float_miou']:.4f}"
        if "int8_miou" in tfl:
            line += (f" tflite_int8_miou={tfl['int8_miou']:.4f} "
                     f"int8_drop={tfl['int8_drop']:.4f} ({tfl['int8_kind']})")
        print(f"{line} on {tfl['eval_images']} val images; "
              f"tflite={os.path.dirname(tfl['float_path'])}")
    print(f"saved_model={target}")
    return results
