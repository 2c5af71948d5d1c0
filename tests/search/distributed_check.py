"""Run by test_distributed in a fresh process: one LBT search epoch under MirroredStrategy on two
logical CPU devices (they must be configured before TensorFlow initialises)."""
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402

from tests.search import models_under_test as helpers  # noqa: E402
from lbt_tf.search import callbacks as search_callbacks  # noqa: E402


def main(hypergrad):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = helpers.stand_in_search_model("lbt", hypergrad, warmup_epochs=0)
    arch_before = helpers.values(model.teacher_learner.arch_variables)
    schedule = search_callbacks.EpochSchedule(model.search_config)
    model.fit(helpers.search_dataset(2), epochs=1, callbacks=[schedule], verbose=0, shuffle=False)
    changed = any(np.abs(b - v.numpy()).max() > 0
                  for b, v in zip(arch_before, model.teacher_learner.arch_variables))
    finite = all(np.all(np.isfinite(v.numpy())) for v in model.trainable_variables)
    # a poisoned batch is skipped on both replicas
    before = helpers.values(model.teacher_learner.weight_variables)
    model.fit(helpers.search_dataset(1, poison_from=0), epochs=1, verbose=0, shuffle=False)
    unchanged = all(np.array_equal(b, v.numpy())
                    for b, v in zip(before, model.teacher_learner.weight_variables))
    print(f"RESULT changed={changed} finite={finite} skipped={int(model.skipped_steps.numpy())} "
          f"unchanged_after_skip={unchanged}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "exact")
