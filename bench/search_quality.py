"""Does the search find anything? Found architectures vs random ones at equal latency.

    python bench/search_quality.py --flagfile=configs/search_quality.flags   (make search_quality)

For each of --quality_methods x --quality_seeds: search, derive, retrain with the config's fixed
budget, evaluate val mIoU and measured latency; then up to --quality_random random architectures
of the same space whose predicted latency is within +-15% of the found ones' median, retrained
with the same budget; then one lbt search whose latency target is the random archs' median.
Writes <run_dir>/search_quality.{md,json,png}; a rerun skips every finished search/retraining
(see lbt_tf/experiments/search_quality.py).
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from lbt_tf import flags as lbt_flags  # noqa: E402
from lbt_tf.experiments import search_quality  # noqa: E402

flags.DEFINE_list("quality_methods", ["fasterseg", "lpt", "lbt"], "Search methods compared.")
flags.DEFINE_list("quality_seeds", ["0", "1", "2"], "Seeds of every method's search+retrain.")
flags.DEFINE_integer("quality_random", 8, "Random architectures retrained (K).")
flags.DEFINE_integer("quality_random_pool", 1000, "Random architectures sampled before the "
                     "latency filter.")
flags.DEFINE_float("quality_tolerance", 0.15, "Relative latency band of the random archs.")
flags.DEFINE_bool("quality_target", True, "Add one lbt search with the random archs' median "
                  "latency as its target.")
flags.DEFINE_string("quality_lock", "", "File lock held while measuring latency (e.g. "
                    "/tmp/heavy.lock on a shared machine); empty: none.")
flags.DEFINE_float("quality_reference_ms", 0.0, "Predicted latency (ms) the random archs must "
                   "match; 0: the median of the found archs.")
flags.DEFINE_integer("quality_interleaved_rounds", 30, "Re-time every network together at the "
                     "end, round-robin over this many rounds (0: keep each run's own evaluate "
                     "timing, taken hours apart under a changing load).")
flags.DEFINE_integer("quality_retrain_seeds", 1, "Retrainings per network (seeds s, s+1000, "
                     "...); a network's val mIoU is their mean.")
flags.DEFINE_integer("quality_eval_val_size", 0, "Synthetic val images the retrained networks "
                     "are evaluated on (0: --synthetic_val_size, which the searches use every "
                     "epoch).")
flags.DEFINE_bool("quality_report_only", False, "Run nothing; report the searches and "
                  "retrainings whose result files exist (a partial or reduced run).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    options = search_quality.QualityOptions(
        methods=tuple(f.quality_methods), seeds=tuple(int(s) for s in f.quality_seeds),
        random_archs=f.quality_random, random_pool=f.quality_random_pool,
        tolerance=f.quality_tolerance, target_row=f.quality_target, lock_path=f.quality_lock,
        reference_ms=f.quality_reference_ms, report_only=f.quality_report_only,
        interleaved_rounds=f.quality_interleaved_rounds, retrain_seeds=f.quality_retrain_seeds,
        eval_val_size=f.quality_eval_val_size)
    search_quality.run_search_quality(lbt_flags.build_config(), options)


if __name__ == "__main__":
    app.run(main)
