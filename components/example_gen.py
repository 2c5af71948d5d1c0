"""ExampleGen: the LBT splits as TFRecords with a schema and statistics (TFX's ExampleGen,
StatisticsGen and SchemaGen in one component). All logic is in `lbt_tf.pipeline_steps`."""
from kfp import dsl


def example_gen(config_json: str, examples: dsl.Output[dsl.Dataset],
                statistics: dsl.Output[dsl.Metrics]):
    """Materialises the teacher/student train/val, unlabeled and val splits as TFRecords."""
    from lbt_tf import pipeline_steps
    metrics = pipeline_steps.example_gen_step(config_json, examples.path)
    pipeline_steps.record_metrics(statistics, metrics)
