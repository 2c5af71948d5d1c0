"""The FasterSeg space's latency: which table entries (latency_table.py) the supernet and a
derived network run, and the latencies summed from them.

(a) `supernet_specs` / `derived_specs`: the configurations (`OpSpec`s) of the supernet and its
    derived networks; a table is timed for `supernet_specs` (`table_for_config`, the one table
    of a config: this device's, re-used or timed, or another device's as it is).
(b) `SupernetLatencyModel`: the expected latency of the supernet under softmax(alpha), the beta
    path mixing and softmax(gamma), as a TF expression of the arch values (no stop-gradients).
    Like FasterSeg's search, it sums over the three output scales the expected latency of the
    path reaching that scale; the stem is counted once; heads and fusion are architecture-
    independent and left out. For a one-hot architecture it is the stem plus the table entries
    of the ops on the three chosen paths.
(c) `derived_latency`: the table's prediction for a derived network, the one number that
    `--mode=describe_arch`, `--mode=measure_latency --arch` and the search's report print;
    `calibrate` fits the table's calibration on random derived networks timed whole.
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
import tensorflow as tf

from lbt_tf.config import ConfigError
from lbt_tf.models.fasterseg import sampling, timing
from lbt_tf.models.fasterseg.derived import build_derived_network, network_plan
from lbt_tf.models.fasterseg.genotype import load_architecture
from lbt_tf.models.fasterseg.latency_table import (OVERHEAD, REUSE_KEYS, LatencyTable, OpSpec,
                                                   fit_calibration, this_device_meta)
from lbt_tf.models.fasterseg.operations import num_filters
from lbt_tf.models.fasterseg.space import (OP_TABLE_NAMES, cell_scales, has_down,
                                           next_cell_inputs, searched_widths)


# ---------------------------------------------------------------------------------- supernet
def feature_size(height, width, scale):
    stride = 8 * 2 ** scale
    return height // stride, width // stride


def _feature_ratios(layer, scale, layers, widths, stem_ratio, head_ratio):
    if layer < 0:
        return (stem_ratio,)
    return (head_ratio,) if layer == layers - 1 else tuple(widths)


def _cell_specs(F, height, width, scale, stride, in_ratios, out_ratios):
    """[op][r_in][r_out] OpSpecs of one cell's keep (stride 1) or down (stride 2) MixedOp."""
    h, w = feature_size(height, width, scale)
    out_scale = 8 * 2 ** scale * stride
    return [[[OpSpec(kind, h, w, num_filters(F, 8 * 2 ** scale, r_in),
                     num_filters(F, out_scale, r_out), stride) for r_out in out_ratios]
              for r_in in in_ratios] for kind in OP_TABLE_NAMES]


def stem_specs(F, height, width, stem_ratio):
    c1, c2, c3 = (num_filters(F, 2, stem_ratio) * 2, num_filters(F, 4, stem_ratio) * 2,
                  num_filters(F, 8, stem_ratio))
    return [OpSpec("ConvNorm", height, width, 3, c1, 2, 3),
            OpSpec("BasicResidual2x", height // 2, width // 2, c1, c2, 2),
            OpSpec("BasicResidual2x", height // 4, width // 4, c2, c3, 2)]


def supernet_cell_plan(teacher_config, height, width):
    """(layer, scale, stride) -> [op][r_in][r_out] OpSpec for every cell op of the supernet."""
    F, L = teacher_config.base_width, teacher_config.layers
    widths = searched_widths(teacher_config)
    stem_ratio, head_ratio = teacher_config.stem_head_width
    plan = {}
    for i in range(L):
        for j in cell_scales(i):
            in_r = _feature_ratios(i - 1 if i > 0 else -1, j, L, widths, stem_ratio, head_ratio)
            out_r = _feature_ratios(i, j, L, widths, stem_ratio, head_ratio)
            plan[(i, j, 1)] = _cell_specs(F, height, width, j, 1, in_r, out_r)
            if has_down(i, j, L):
                plan[(i, j, 2)] = _cell_specs(F, height, width, j, 2, in_r, out_r)
    return plan


def head_specs(F, height, width, num_classes, stem_ratio, head_ratio, widths, glue=True):
    """Refines, fusion, head (and glue) of every derived network of the space: a refine's
    3x3 conv reads the branch's own last 1/16 or 1/8 feature, of any searched width."""
    c8, c16, c32 = (num_filters(F, s, head_ratio) for s in (8, 16, 32))
    (h8, w8), (h16, w16), (h32, w32) = (feature_size(height, width, s) for s in range(3))
    specs = [OpSpec("ConvNorm", h32, w32, c32, c16, 1, 1), OpSpec("ConvNorm", h16, w16, c16, c8, 1, 1),
             OpSpec("ff", h8, w8, 2 * c8, 2 * c8), OpSpec("head", h8, w8, 2 * c8, num_classes),
             OpSpec("head", h8, w8, c8, num_classes)]
    if glue:
        specs += [OVERHEAD, OpSpec("resize", h32, w32, c16, c16, 2),
                  OpSpec("resize", h16, w16, c8, c8, 2), OpSpec("concat", h8, w8, c8, 2 * c8),
                  OpSpec("resize", h8, w8, num_classes, num_classes, 8)]
    for ratio in set(widths) | {stem_ratio, head_ratio}:
        last16, last8 = num_filters(F, 16, ratio), num_filters(F, 8, ratio)
        specs += [OpSpec("ConvNorm", h16, w16, c16 + last16, c16), OpSpec("ConvNorm", h8, w8, c8 + last8, c8)]
        if glue:
            specs += [OpSpec("concat", h16, w16, c16, c16 + last16),
                      OpSpec("concat", h8, w8, c8, c8 + last8)]
    return specs


def supernet_specs(teacher_config, height, width, num_classes, glue=True):
    """Every distinct configuration the supernet and its derived networks use (stem, cells,
    refines, fusion, heads and, for tables timed here, glue)."""
    tc = teacher_config
    stem_ratio, head_ratio = tc.stem_head_width
    specs = set(stem_specs(tc.base_width, height, width, stem_ratio))
    for cube in supernet_cell_plan(tc, height, width).values():
        specs.update(s for per_op in cube for row in per_op for s in row)
    specs.update(head_specs(tc.base_width, height, width, num_classes, stem_ratio, head_ratio,
                            searched_widths(tc), glue))
    return sorted(specs, key=lambda s: s.key)


class SupernetLatencyModel:
    """Expected supernet latency as a differentiable function of the arch values."""

    def __init__(self, supernet, table):
        height, width = supernet.latency_input_size
        tc = supernet.teacher_config
        self.layers = tc.layers
        self.search_widths = len(supernet.width_mult_list) > 1
        self.stem_ms = sum(table.get(s) for s in stem_specs(tc.base_width, height, width,
                                                            tc.stem_head_width[0]))
        # (layer, scale, stride) -> [op, r_in, r_out] milliseconds
        self.cells = {key: np.array([[[table.get(s) for s in row] for row in per_op]
                                     for per_op in cube], np.float32)
                      for key, cube in supernet_cell_plan(tc, height, width).items()}

    def _width_probs(self, gammas, layer, scale):
        if layer < 0 or layer == self.layers - 1 or not self.search_widths:
            return tf.ones([1])
        return gammas[scale][layer - 1 if scale == 2 else layer]

    def cell_latency(self, arch, gammas, layer, scale, stride):
        alpha = tf.nn.softmax(arch[f"alpha_{scale}"], -1)[layer - scale]
        p_in = self._width_probs(gammas, layer - 1 if layer > 0 else -1, scale)
        p_out = self._width_probs(gammas, layer, scale + (stride == 2))
        return tf.einsum("o,r,s,ors->", alpha, p_in, p_out,
                         tf.constant(self.cells[(layer, scale, stride)]))

    def __call__(self, arch):
        L = self.layers
        gammas = ([tf.nn.softmax(arch[f"gamma_{s}"], -1) for s in range(3)]
                  if self.search_widths else None)
        betas = [None, tf.nn.softmax(arch["beta_1"], -1), tf.nn.softmax(arch["beta_2"], -1)]
        reach = {0: tf.constant(0.0)}   # expected latency from the stem to each cell's input
        for i in range(L - 1):
            keep = {j: reach[j] + self.cell_latency(arch, gammas, i, j, 1) for j in reach}
            down = {j + 1: reach[j] + self.cell_latency(arch, gammas, i, j, 2)
                    for j in reach if j < 2}
            reach = next_cell_inputs(keep, down, betas, i)
        ends = [reach[j] + self.cell_latency(arch, gammas, L - 1, j, 1) for j in range(3)]
        return self.stem_ms + tf.add_n(ends)


# ---------------------------------------------------------------------------------- derived
def derived_specs(arch, num_classes, height, width, base_width=None, glue=True):
    """Configurations a derived network runs: {"stem", "branch_<stride>" (own cells and
    refines), "fusion" (feature fusion, head) and, with glue, "glue" (per-call overhead, the
    refines' x2 upsamplings and concats, the branches' concat, the final x8 upsampling)}."""
    plan = network_plan(arch, base_width)
    groups = {"stem": stem_specs(plan.base_width, height, width, plan.stem_ratio)}
    glue_specs = [OVERHEAD]
    for branch in plan.branches:
        specs = []
        for cell in branch.cells[branch.shared_prefix:]:
            h, w = feature_size(height, width, cell.scale)
            specs.append(OpSpec(OP_TABLE_NAMES[cell.op], h, w, cell.cin, cell.cout, cell.stride))
        for arm, refine in zip(branch.refines[0::2], branch.refines[1::2]):
            (h, w), (h2, w2) = (feature_size(height, width, c.scale) for c in (arm, refine))
            specs += [OpSpec("ConvNorm", h, w, arm.cin, arm.cout, 1, arm.kernel),
                      OpSpec("ConvNorm", h2, w2, refine.cin, refine.cout, 1, refine.kernel)]
            # glue: the arm's output upsampled x2, concatenated with the branch's feature
            glue_specs += [OpSpec("resize", h, w, arm.cout, arm.cout, 2),
                           OpSpec("concat", h2, w2, arm.cout, refine.cin)]
        groups[f"branch_{branch.output_stride}"] = specs
    h8, w8 = feature_size(height, width, 0)
    fused = plan.head_channels * len(plan.branches)
    groups["fusion"] = [OpSpec("ff", h8, w8, fused, fused), OpSpec("head", h8, w8, fused, num_classes)]
    if len(plan.branches) > 1:
        glue_specs += [OpSpec("concat", h8, w8, plan.head_channels * k, plan.head_channels * (k + 1))
                       for k in range(1, len(plan.branches))]
    glue_specs.append(OpSpec("resize", h8, w8, num_classes, num_classes, 8))
    if glue:
        groups["glue"] = glue_specs
    return groups


def derived_latency(arch, table, num_classes, height, width, base_width=None):
    """Table-predicted latency (ms) of a derived network: {"total": ms, "table_sum": ms,
    <group>: ms, ...}; total is the table's calibration applied to the sum of its entries
    (`LatencyTable.calibrated`). The one prediction of a found network (describe_arch,
    measure_latency, the search's log and report)."""
    groups = derived_specs(arch, num_classes, height, width, base_width, table.has_glue)
    result = {name: float(sum(table.get(s) for s in specs)) for name, specs in groups.items()}
    result["table_sum"] = float(sum(result.values()))
    result["total"] = table.calibrated(result["table_sum"])
    return result


def measure_networks(archs, num_classes, height, width, runtime, clock="wall", runs=10,
                     warmup=3):
    """Median ms of each whole derived network (no aux heads), timed round-robin."""
    runners = [network_runner(build_derived_network(arch, num_classes, (height, width, 3),
                                                    aux_heads=False), height, width, runtime)
               for arch in archs]
    return timing.interleaved_medians(runners, runs, warmup, clock)


def calibration_architectures(teacher_config, count, seed):
    """The random derived networks a table's calibration is fitted on (sampling.py's)."""
    if count < 3:
        raise ConfigError(f"--latency_calibration_networks={count}: need 0 (off) or >= 3")
    return sampling.sample_architectures(teacher_config, count, seed)


def calibrate(table, teacher_config, num_classes, height, width, count=8, seed=0):
    """`fit_calibration` on `count` random derived networks of the configured space, timed
    whole in the table's runtime and clock right after its entries."""
    archs = calibration_architectures(teacher_config, count, seed)
    table.ensure([s for arch in archs for group in derived_specs(
        arch, num_classes, height, width, glue=table.has_glue).values() for s in group])
    sums = [derived_latency(a, table, num_classes, height, width)["table_sum"] for a in archs]
    measured = measure_networks(archs, num_classes, height, width, table.meta["runtime"],
                                table.meta.get("clock", "wall"),
                                max(10, int(table.meta.get("runs", 5))))
    return fit_calibration(table, sums, measured, seed)


def network_runner(network, height, width, runtime):
    """Zero-argument callable: one batch-1 inference (logits) compiled like the table's ops."""
    fn = timing.frozen_call(network, lambda outputs: outputs["logits"])
    images = tf.random.normal([1, height, width, 3], seed=2)
    return timing.compile_for(runtime, fn, images)


def measure_network(network, height, width, runtime, runs=10, warmup=3, clock="wall") -> float:
    """Median ms of the whole derived network at batch 1, in the table's runtime and clock."""
    return timing.time_callable(network_runner(network, height, width, runtime), runs, warmup,
                                clock=clock)


# ---------------------------------------------------------------------------------- config
def default_table_path(config) -> str:
    d, tc = config.data, config.teacher
    return tc.latency_table or os.path.join(
        config.run_dir, f"latency_table_{tc.latency_runtime}_{d.image_height}x{d.image_width}.json")


def table_for_config(config, measure=True, runs=5, warmup=2):
    """(LatencyTable, path) for config's image size, runtime and --latency_compat.

    A table from another device (FasterSeg's) is used as it is. This device's table is re-used
    when device, runtime, TF version and size match (else re-timed), and with `measure` every
    configuration of the search space is timed now (progress printed); without, entries are
    timed on first use.
    """
    d, tc = config.data, config.teacher
    path = default_table_path(config)
    meta = this_device_meta(tc.latency_runtime, d.image_height, d.image_width, runs, warmup,
                            tc.latency_clock)
    table = None
    if os.path.exists(path):
        table = LatencyTable.load(path, compat=tc.latency_compat, measure_missing=True)
        if not table.own:
            return table, path
        if any(table.meta.get(k) != meta[k] for k in REUSE_KEYS):
            logging.warning("latency table %s was timed for %s; re-timing for %s",
                            path, {k: table.meta.get(k) for k in REUSE_KEYS},
                            {k: meta[k] for k in REUSE_KEYS})
            table = None
    if table is None:
        table = LatencyTable({}, meta, path, tc.latency_compat, measure_missing=True)
    changed = measure and table.ensure(supernet_specs(tc, d.image_height, d.image_width,
                                                      d.num_classes))
    if measure and tc.latency_calibration_networks and "calibration" not in table.meta:
        fit = calibrate(table, tc, d.num_classes, d.image_height, d.image_width,
                        tc.latency_calibration_networks, config.seed)
        if fit:
            print(f"latency table: calibrated on {fit['networks']} networks: measured = "
                  f"{fit['offset_ms']:.3f} ms + {fit['scale']:.3f} x table sum", flush=True)
        changed = True
    if changed:
        table.save()
    return table, path


def run_measure_latency(config):
    """--mode=measure_latency: time (or re-use) this device's table; with --arch, print the
    table's prediction for that network next to its measured latency in the same runtime."""
    from scipy import stats
    d, tc = config.data, config.teacher
    start = time.perf_counter()
    table, path = table_for_config(config)
    print(f"latency table: {len(table)} entries for {d.image_height}x{d.image_width}, runtime "
          f"{table.meta.get('runtime', 'unknown')} on {table.meta.get('device', 'another device')} "
          f"({time.perf_counter() - start:.1f} s)")
    reference_path = tc.reference_latency_table
    if reference_path:
        if not os.path.exists(reference_path):
            raise ConfigError(f"--reference_latency_table={reference_path}: no such file")
        reference = LatencyTable.load(reference_path)
        common = sorted(set(reference.entries) & set(table.entries))
        line = f"reference table {reference_path}: {len(reference)} entries, {len(common)} shared keys"
        if len(common) > 2:
            rho = stats.spearmanr([table.entries[k] for k in common],
                                  [reference.entries[k] for k in common])[0]
            line += f", Spearman rank correlation {rho:.3f}"
        print(line)
    if config.train.arch:
        arch = load_architecture(config.train.arch)
        predicted = derived_latency(arch, table, d.num_classes, d.image_height, d.image_width)
        print(f"{config.train.arch}: predicted {predicted['total']:.3f} ms "
              f"(--latency_compat={table.compat})")
        if table.own:
            network = build_derived_network(arch, d.num_classes, (d.image_height, d.image_width, 3),
                                            aux_heads=False)
            measured = measure_network(network, d.image_height, d.image_width,
                                       table.meta["runtime"], config.eval.latency_runs,
                                       config.eval.latency_warmup, table.meta.get("clock", "wall"))
            print(f"{config.train.arch}: measured {measured:.3f} ms ({table.meta['runtime']}, "
                  f"{table.meta.get('clock', 'wall')} clock)")
        if table.own:
            table.save()   # keeps entries timed on demand for this network
    print(path)
    return path
