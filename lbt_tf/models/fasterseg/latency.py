"""Latency lookup tables (FasterSeg latency/latency_lookup_table.py) and differentiable latency.

(a) `LatencyTable` measures each distinct operator configuration on this device (batch 1,
    inference, `tf.function`, warm-up runs then the median of timed runs) under FasterSeg-style
    keys, e.g. `BasicResidual2x_H8_W16_Cin32_Cout32_stride1_dilation1`, and caches it as JSON
    with a `meta` block; the cache is re-used when device and input size match.
(b) `LatencyTable.load` also reads FasterSeg's own table (a plain key -> ms JSON).
(c) `SupernetLatencyModel`: the expected latency of the supernet under softmax(alpha), the beta
    path mixing and softmax(gamma), as a TF expression of the arch values (no stop-gradients).
    Like FasterSeg's `forward_latency`, it sums, over the three output scales, the expected
    latency of the path reaching that scale (a path's stride-2 step costs the down op, every
    other step the keep op); the stem is counted once; heads and fusion are architecture-
    independent and left out. For a one-hot architecture it is the stem plus the table entries
    of the ops on the three chosen paths.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import re
import time

import numpy as np
import tensorflow as tf

from lbt_tf.config import ConfigError
from lbt_tf.errors import LbtError
from lbt_tf.models.fasterseg import operations as ops_lib
from lbt_tf.models.fasterseg.derived import network_plan
from lbt_tf.models.fasterseg.operations import num_filters
from lbt_tf.models.fasterseg.space import (OP_TABLE_NAMES, cell_scales, has_down,
                                           next_cell_inputs, searched_widths)

_CELL_KINDS = OP_TABLE_NAMES
_KEY_RE = re.compile(
    r"^(?P<kind>[A-Za-z_0-9]+?)_H(?P<h>\d+)_W(?P<w>\d+)_C(?:in)?(?P<cin>\d+)"
    r"(?:_Cout(?P<cout>\d+))?(?:_kernel(?P<kernel>\d+))?(?:_stride(?P<stride>\d+))?"
    r"(?:_dilation\d+)?$")


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One operator configuration: FasterSeg cell op, ConvNorm, head or feature fusion."""
    kind: str
    height: int
    width: int
    cin: int
    cout: int
    stride: int = 1
    kernel: int = 3

    @property
    def key(self) -> str:
        size = f"H{self.height}_W{self.width}"
        if self.kind == "ff":
            return f"ff_{size}_C{self.cin}"
        if self.kind == "head":
            return f"head_{size}_Cin{self.cin}_Cout{self.cout}"
        if self.kind == "ConvNorm":
            return f"ConvNorm_{size}_Cin{self.cin}_Cout{self.cout}_kernel{self.kernel}_stride{self.stride}"
        if self.kind == "FactorizedReduce":
            return f"FactorizedReduce_{size}_Cin{self.cin}_Cout{self.cout}_stride{self.stride}"
        return f"{self.kind}_{size}_Cin{self.cin}_Cout{self.cout}_stride{self.stride}_dilation1"

    @staticmethod
    def from_key(key: str) -> "OpSpec":
        match = _KEY_RE.match(key)
        if not match:
            raise ValueError(f"not a FasterSeg latency key: {key!r}")
        g = match.groupdict()
        cin = int(g["cin"])
        return OpSpec(g["kind"], int(g["h"]), int(g["w"]), cin, int(g["cout"] or cin),
                      int(g["stride"] or 1), int(g["kernel"] or 3))

    def build_layer(self):
        if self.kind in _CELL_KINDS:
            return ops_lib.CellOp(_CELL_KINDS.index(self.kind), self.cout, self.stride)
        if self.kind == "ConvNorm":
            return ops_lib.ConvNorm(self.cout, self.kernel, self.stride)
        if self.kind == "head":
            return ops_lib.Head(self.cin, self.cout)
        if self.kind == "ff":
            return ops_lib.FeatureFusion(self.cin)
        raise ValueError(f"unknown operator kind {self.kind!r}")


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU:" + details.get("device_name", gpus[0].name)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU:{model}:{os.cpu_count()} cores"


def time_layer(spec: OpSpec, runs: int = 5, warmup: int = 2, compiled: bool = False) -> float:
    """Median wall time (ms) of one batch-1 inference call of the operator.

    compiled=False (the table's default) times eager calls: tracing a `tf.function` per
    configuration costs ~0.3 s on 2 CPU cores, too slow for the ~600 configurations of a
    supernet; eager times include the per-op dispatch cost, which dominates at small sizes.
    """
    if spec.kind == "FactorizedReduce" and spec.stride == 1:
        return 0.0   # identity in the derived network (FasterSeg measures an identity, too)
    layer = spec.build_layer()
    inputs = tf.random.normal([1, spec.height, spec.width, spec.cin])
    run = (tf.function(lambda x: layer(x, training=False)) if compiled
           else (lambda x: layer(x, training=False)))
    return time_callable(run, inputs, runs, warmup)


def time_callable(run, inputs, runs: int = 5, warmup: int = 2) -> float:
    """Median milliseconds of `run(inputs)` after `warmup` untimed calls."""
    for _ in range(max(1, warmup)):
        _block(run(inputs))
    timings = []
    for _ in range(max(1, runs)):
        start = time.perf_counter()
        _block(run(inputs))
        timings.append((time.perf_counter() - start) * 1e3)
    return float(np.median(timings))


def _block(outputs):
    """Waits for the result (GPU execution is asynchronous)."""
    for leaf in tf.nest.flatten(outputs):
        leaf.numpy()


class LatencyTable:
    """key -> milliseconds; measures missing keys on demand when `measure_missing`."""

    def __init__(self, entries=None, meta=None, measure_missing=False, runs=5, warmup=2):
        self.entries = {str(k): float(v) for k, v in (entries or {}).items()}
        self.meta = dict(meta or {})
        self.measure_missing, self.runs, self.warmup = measure_missing, runs, warmup

    def __len__(self):
        return len(self.entries)

    def __contains__(self, key):
        return (key.key if isinstance(key, OpSpec) else key) in self.entries

    def get(self, spec) -> float:
        key = spec.key if isinstance(spec, OpSpec) else spec
        if key not in self.entries:
            if not self.measure_missing:
                raise KeyError(f"latency table has no entry {key!r}")
            self.entries[key] = time_layer(spec if isinstance(spec, OpSpec) else
                                           OpSpec.from_key(key), self.runs, self.warmup)
        return self.entries[key]

    def ensure(self, specs, log_every: int = 100) -> int:
        """Measures every spec not yet in the table; returns how many were measured."""
        missing = sorted({s for s in specs if s.key not in self.entries}, key=lambda s: s.key)
        for n, spec in enumerate(missing):
            self.entries[spec.key] = time_layer(spec, self.runs, self.warmup)
            if log_every and (n + 1) % log_every == 0:
                logging.info("latency table: measured %d / %d", n + 1, len(missing))
        return len(missing)

    def save(self, path: str):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"meta": self.meta, "entries": dict(sorted(self.entries.items()))}, f,
                      indent=1)

    @staticmethod
    def load(path: str, **kwargs) -> "LatencyTable":
        """Our cached JSON ({"meta", "entries"}) or FasterSeg's plain key -> ms JSON."""
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError) as err:
            raise LbtError(f"latency table {path}: cannot read JSON ({err})") from None
        if not isinstance(raw, dict):
            raise LbtError(f"latency table {path}: expected a JSON object")
        entries, meta = (raw["entries"], raw.get("meta", {})) if "entries" in raw else (raw, {})
        try:
            return LatencyTable(entries, meta, **kwargs)
        except (TypeError, ValueError) as err:
            raise LbtError(f"latency table {path}: entries must be numbers ({err})") from None


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
              for r_in in in_ratios] for kind in _CELL_KINDS]


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


def supernet_specs(teacher_config, height, width, num_classes):
    """Every distinct op configuration the supernet uses (stem, cells, refines, heads)."""
    specs = set(stem_specs(teacher_config.base_width, height, width,
                           teacher_config.stem_head_width[0]))
    for cube in supernet_cell_plan(teacher_config, height, width).values():
        specs.update(s for per_op in cube for row in per_op for s in row)
    F, head = teacher_config.base_width, teacher_config.stem_head_width[1]
    c8, c16, c32 = (num_filters(F, s, head) for s in (8, 16, 32))
    (h8, w8), (h16, w16), (h32, w32) = (feature_size(height, width, s) for s in range(3))
    specs.update([OpSpec("ConvNorm", h16, w16, c16, c8, 1, 1), OpSpec("ConvNorm", h8, w8, 2 * c8, c8),
                  OpSpec("ConvNorm", h32, w32, c32, c16, 1, 1),
                  OpSpec("ConvNorm", h16, w16, 2 * c16, c16), OpSpec("ConvNorm", h16, w16, c16, c8, 1, 1),
                  OpSpec("head", h8, w8, c8, num_classes), OpSpec("head", h8, w8, 2 * c8, num_classes)])
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
def derived_specs(arch, num_classes, height, width, base_width=None):
    """OpSpecs of a derived network: {"stem": [...], "branch_<stride>": [...], "fusion": [...]}."""
    plan = network_plan(arch, base_width)
    groups = {"stem": stem_specs(plan.base_width, height, width, plan.stem_ratio)}
    for branch in plan.branches:
        specs = []
        for cell in branch.cells[branch.shared_prefix:]:
            h, w = feature_size(height, width, cell.scale)
            specs.append(OpSpec(_CELL_KINDS[cell.op], h, w, cell.cin, cell.cout, cell.stride))
        for conv in branch.refines:
            h, w = feature_size(height, width, conv.scale)
            specs.append(OpSpec("ConvNorm", h, w, conv.cin, conv.cout, 1, conv.kernel))
        groups[f"branch_{branch.output_stride}"] = specs
    h8, w8 = feature_size(height, width, 0)
    fused = plan.head_channels * len(plan.branches)
    groups["fusion"] = [OpSpec("ff", h8, w8, fused, fused), OpSpec("head", h8, w8, fused, num_classes)]
    return groups


def derived_latency(arch, table, num_classes, height, width, base_width=None):
    """Table-predicted latency (ms) of a derived network: {"total": ms, <group>: ms, ...}."""
    groups = derived_specs(arch, num_classes, height, width, base_width)
    result = {name: float(sum(table.get(s) for s in specs)) for name, specs in groups.items()}
    result["total"] = float(sum(result.values()))
    return result


# ---------------------------------------------------------------------------------- config
def default_table_path(config) -> str:
    d = config.data
    return config.teacher.latency_table or os.path.join(
        config.run_dir, f"latency_table_{d.image_height}x{d.image_width}.json")


def table_for_config(config, runs=None, warmup=None):
    """(LatencyTable covering the supernet, path): the cache when it matches, else measured."""
    d = config.data
    path = default_table_path(config)
    runs = runs or 3
    warmup = warmup or 1
    meta = {"device": device_name(), "height": d.image_height, "width": d.image_width,
            "tensorflow": tf.__version__, "batch": 1}
    table = None
    if os.path.exists(path):
        cached = LatencyTable.load(path, measure_missing=True, runs=runs, warmup=warmup)
        if all(cached.meta.get(k) == meta[k] for k in ("device", "height", "width")):
            table = cached
        else:
            logging.warning("latency table %s was measured for %s; re-measuring for %s",
                            path, cached.meta, meta)
    if table is None:
        table = LatencyTable({}, meta, measure_missing=True, runs=runs, warmup=warmup)
    measured = table.ensure(supernet_specs(config.teacher, d.image_height, d.image_width,
                                           d.num_classes))
    if measured:
        table.save(path)
    return table, path


def run_measure_latency(config):
    """--mode=measure_latency: measure (or re-use) this device's table, print its path."""
    from scipy import stats
    start = time.perf_counter()
    table, path = table_for_config(config)
    print(f"latency table: {len(table)} entries for {table.meta.get('height')}x"
          f"{table.meta.get('width')} on {table.meta.get('device')} "
          f"({time.perf_counter() - start:.1f} s)")
    reference_path = config.teacher.reference_latency_table
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
    print(path)
    return path
