"""Pusher: copies the SavedModel to the serving directory only when the evaluator blessed it
(refuses otherwise). All logic is in `lbt_tf.pipeline_steps`."""
from kfp import dsl


def pusher(config_json: str, model: dsl.Input[dsl.Model], blessing: dsl.Input[dsl.Artifact],
           pushed_model: dsl.Output[dsl.Artifact]):
    """Writes a push record JSON {"pushed": bool, "destination": str | null, "reason": str}."""
    from lbt_tf import pipeline_steps
    record = pipeline_steps.pusher_step(config_json, model.path, blessing.path,
                                        pushed_model.path)
    pushed_model.metadata.update(record)
