"""Trainer: retrains the derived network of `architecture` from scratch (optional distillation
as configured by `config.train.distill_*`) and exports it as a SavedModel. All logic is in
`lbt_tf.pipeline_steps` / `lbt_tf.retrain`."""
from kfp import dsl


def trainer(config_json: str, examples: dsl.Input[dsl.Dataset],
            architecture: dsl.Input[dsl.Artifact], model: dsl.Output[dsl.Model]):
    """Writes `<model>/train/model.weights.h5` (+ arch.json) and `<model>/saved_model/`."""
    from lbt_tf import pipeline_steps
    pipeline_steps.trainer_step(config_json, examples.path, architecture.path, model.path)
