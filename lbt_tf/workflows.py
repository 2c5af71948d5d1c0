"""The main job (`--mode=demo`, `make demo`): every stage of lbt_tf once, on the configured data.

sample grid of the data -> LBT architecture search (warm-up, then the unrolled LBT updates) ->
retrain the found network -> evaluate it (mIoU table, confusion matrix, prediction grid,
latency) -> export a SavedModel (+ TFLite) -> predict with the SavedModel on unlabeled images.
Each stage is the same function its own `--mode` runs; this module only chains them.
"""
from __future__ import annotations

import os

from lbt_tf import config as config_lib


def demo(config):
    from lbt_tf.data.splits import run_print_splits
    from lbt_tf.data.visualize import run_sample_grid
    from lbt_tf.retrain.evaluate import run_evaluate
    from lbt_tf.retrain.export import run_export
    from lbt_tf.retrain.predict import run_predict
    from lbt_tf.retrain.trainer import run_train
    from lbt_tf.search.runner import run_search

    _stage("1/6 data: the LBT splits and a sample grid")
    run_print_splits(config)
    run_sample_grid(config)
    _stage(f"2/6 search: mode={config.search.mode} hypergrad={config.search.hypergrad}")
    search_result = run_search(config_lib.replace(config, mode="search"))
    arch_path = search_result.arch_path
    retrain_config = config_lib.replace(config, mode="train", **{"train.arch": arch_path})
    _stage(f"3/6 retrain the found architecture ({arch_path})")
    run_train(retrain_config)
    _stage("4/6 evaluate")
    run_evaluate(config_lib.replace(retrain_config, mode="evaluate"))
    _stage("5/6 export")
    export_config = config_lib.replace(retrain_config, mode="export")
    run_export(export_config)
    _stage("6/6 predict with the SavedModel on unlabeled images of another size")
    inputs_dir = os.path.join(config.run_dir, "predict", "inputs")
    outputs_dir = os.path.join(config.run_dir, "predict", "outputs")
    inputs = _write_unlabeled_images(config, inputs_dir)
    run_predict(config_lib.replace(export_config, mode="predict", **{
        "export.input": inputs_dir, "export.output": outputs_dir}))
    grid = _prediction_grid(inputs, outputs_dir, os.path.join(config.run_dir, "predict.png"))
    print(f"prediction grid: {grid}")
    print(f"demo finished; everything is under {os.path.abspath(config.run_dir)}")


def _write_unlabeled_images(config, folder, count=4):
    """A few D_u images as PNG files, at 1.5x the configured size (serving resizes any size)."""
    from PIL import Image

    from lbt_tf.data import make_splits
    from lbt_tf.data.synthetic import synthetic_image
    os.makedirs(folder, exist_ok=True)
    source = make_splits(config.data, config.seed).unlabeled.take(count)
    height, width = config.data.image_height * 3 // 2, config.data.image_width * 3 // 2
    if source.kind == "synthetic":
        images = [synthetic_image(source.seed, source.split, key, height, width)
                  for key in source.keys]
    else:  # the user's images, as the input pipeline decodes them
        from lbt_tf.data import denormalize, make_dataset
        batches = make_dataset(config.data, source, training=False)
        images = [image for batch in batches
                  for image in denormalize(batch[0] if isinstance(batch, tuple) else batch,
                                           config.data).numpy()]
    paths = []
    for number, image in enumerate(images):
        paths.append(os.path.join(folder, f"unlabeled_{number}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


def _prediction_grid(inputs, outputs_dir, path):
    import numpy as np
    from PIL import Image

    from lbt_tf.data.visualize import save_grid
    rows = []
    for image_path in inputs:
        stem = os.path.splitext(os.path.basename(image_path))[0]
        rows.append([np.asarray(Image.open(p).convert("RGB")) for p in (
            image_path, os.path.join(outputs_dir, f"{stem}_labels.png"),
            os.path.join(outputs_dir, f"{stem}_overlay.png"))])
    return save_grid(path, rows, ["image", "predicted labels (SavedModel)", "overlay"])


def _stage(title):
    print(f"\n=== {title} ===", flush=True)
