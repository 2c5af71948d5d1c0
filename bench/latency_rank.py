"""Rank correlation between table-predicted and measured latency of random derived networks.

  python bench/latency_rank.py --flagfile=configs/demo.flags [--bench_networks=10]
Measures (or re-uses) this device's latency table for the configured image size, derives
networks from random arch parameters of the configured supernet, predicts each network's
latency from the table and times it end to end (eager and tf.function, batch 1), then prints
Spearman's rho for both.
"""
from absl import app, flags
import numpy as np
import tensorflow as tf
from scipy import stats

from lbt_tf import flags as lbt_flags
from lbt_tf.models.fasterseg import build_derived_network, derive_architecture, latency
from lbt_tf.models.fasterseg.space import arch_variable_shapes, searched_widths

flags.DEFINE_integer("bench_networks", 10, "Random derived networks to time.")


def main(argv):
    config = lbt_flags.build_config()
    d, tc = config.data, config.teacher
    table, path = latency.table_for_config(config)
    print(f"latency table: {path} ({len(table)} entries)")
    rng = np.random.default_rng(config.seed)
    shapes = arch_variable_shapes(tc.layers, len(searched_widths(tc)))
    predicted, eager, compiled = [], [], []
    for n in range(flags.FLAGS.bench_networks):
        arrays = {k: rng.normal(scale=2.0, size=s) for k, s in shapes.items()}
        arch = derive_architecture(arrays, tc, branch_selection=("strides_8_32", "strides_16_32")[n % 2])
        net = build_derived_network(arch, d.num_classes, (d.image_height, d.image_width, 3),
                                    aux_heads=False)
        images = tf.random.normal([1, d.image_height, d.image_width, 3])
        predicted.append(latency.derived_latency(arch, table, d.num_classes, d.image_height,
                                                 d.image_width)["total"])
        eager.append(latency.time_callable(lambda x: net(x, training=False), images, 5, 2))
        run = tf.function(lambda x: net(x, training=False))
        compiled.append(latency.time_callable(run, images, 5, 2))
        print(f"net {n}: predicted {predicted[-1]:.2f} ms, eager {eager[-1]:.2f} ms, "
              f"tf.function {compiled[-1]:.2f} ms")
    print(f"spearman(predicted, eager)={stats.spearmanr(predicted, eager)[0]:.3f}")
    print(f"spearman(predicted, tf.function)={stats.spearmanr(predicted, compiled)[0]:.3f}")


if __name__ == "__main__":
    app.run(main)
