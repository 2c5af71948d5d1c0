"""Search: an LBT / LPT / FasterSeg architecture search (`config.search.mode`) on the splits of
`examples`. All logic is in `lbt_tf.pipeline_steps` / `lbt_tf.search.runner`."""
from kfp import dsl


def search(config_json: str, examples: dsl.Input[dsl.Dataset],
           architecture: dsl.Output[dsl.Artifact], teacher_checkpoint: dsl.Output[dsl.Model],
           search_metrics: dsl.Output[dsl.Metrics]):
    """Runs (or resumes) the search; outputs the derived architecture JSON, a copy of its run dir
    (teacher/student checkpoints, TensorBoard logs, per-epoch architectures) and its metrics."""
    from lbt_tf import pipeline_steps
    metrics = pipeline_steps.search_step(config_json, examples.path, teacher_checkpoint.path,
                                         architecture.path)
    pipeline_steps.record_metrics(search_metrics, metrics)
