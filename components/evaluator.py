"""Evaluator: mIoU and latency of the trained model, and the blessing (mIoU >=
`bless_min_miou` and latency <= `bless_max_latency_ms`). All logic is in
`lbt_tf.pipeline_steps` / `lbt_tf.retrain.evaluate`."""
from kfp import dsl


def evaluator(config_json: str, model: dsl.Input[dsl.Model],
              evaluation: dsl.Output[dsl.Artifact], evaluation_metrics: dsl.Output[dsl.Metrics],
              blessing: dsl.Output[dsl.Artifact]):
    """Writes the evaluation directory (metrics.json, per-class IoU, confusion matrix), its
    scalar metrics and a blessing JSON {"blessed": bool, "reasons": [...]}."""
    from lbt_tf import pipeline_steps
    metrics, verdict = pipeline_steps.evaluator_step(config_json, model.path, evaluation.path,
                                                     blessing.path)
    pipeline_steps.record_metrics(evaluation_metrics, metrics)
    blessing.metadata["blessed"] = verdict["blessed"]
