"""Latency lookup tables (FasterSeg latency/latency_lookup_table.py) and differentiable latency.

(a) `LatencyTable`: milliseconds per operator configuration under FasterSeg-style keys, e.g.
    `BasicResidual2x_H8_W16_Cin32_Cout32_stride1_dilation1`. This device's own table is timed
    the way the network runs (timing.py: compiled for `--latency_runtime` tf|xla|tflite, batch
    1, warm-up, median): each entry is the op's time minus the fixed per-call overhead, which
    is an entry of its own ("overhead") counted once per network, like the resizes and concats
    between the ops ("glue": `resize_*`, `concat_*`). The JSON's `meta` records device,
    runtime, TF version and size; the file is re-used when they match.
(b) A table from another device (FasterSeg's 1080Ti JSON, key -> ms) is read as it is: never
    topped up with entries timed here (that would mix two devices' milliseconds in one sum); a
    missing key is an error naming key and table. It has no glue entries; its sums are
    FasterSeg's (ops, refines, fusion, head).
(c) `--latency_compat`: `faithful` reads every op under its own key; `fasterseg` reproduces
    FasterSeg's `forward_latency`, whose `BasicResidual_downup_2x` (conv_2x_downup) reads the
    `BasicResidual2x` entry of the same shape (a copy-paste slip in its operations.py).
(d) `SupernetLatencyModel`: the expected latency of the supernet under softmax(alpha), the beta
    path mixing and softmax(gamma), as a TF expression of the arch values (no stop-gradients).
    Like FasterSeg's search, it sums over the three output scales the expected latency of the
    path reaching that scale; the stem is counted once; heads and fusion are architecture-
    independent and left out. For a one-hot architecture it is the stem plus the table entries
    of the ops on the three chosen paths.
(e) `derived_latency`: the table's prediction for a derived network, the one number that
    `--mode=describe_arch`, `--mode=measure_latency --arch` and the search's report print.
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
from lbt_tf.models.fasterseg import operations as ops_lib, sampling, timing
from lbt_tf.models.fasterseg.derived import build_derived_network, network_plan
from lbt_tf.models.fasterseg.operations import num_filters
from lbt_tf.models.fasterseg.genotype import load_architecture
from lbt_tf.models.fasterseg.space import (OP_TABLE_NAMES, cell_scales, has_down,
                                           next_cell_inputs, searched_widths)

_CELL_KINDS = OP_TABLE_NAMES
COMPAT_MODES = ("faithful", "fasterseg")
FORMAT = "lbt_tf/latency-table-v3"   # v3: the derived network resizes with TF's kernel
# Meta fields that must match for a cached table to be re-used.
REUSE_KEYS = ("format", "device", "runtime", "clock", "tensorflow", "height", "width", "batch",
              "threads")
_KEY_RE = re.compile(
    r"^(?P<kind>[A-Za-z_0-9]+?)_H(?P<h>\d+)_W(?P<w>\d+)_C(?:in)?(?P<cin>\d+)"
    r"(?:_Cout(?P<cout>\d+))?(?:_kernel(?P<kernel>\d+))?(?:_stride(?P<stride>\d+))?"
    r"(?:_dilation\d+)?(?:_x(?P<factor>\d+))?$")


class LatencyTableError(LbtError, LookupError):
    """A latency table lacks an entry it may not measure; the message names key and table."""


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """One timed configuration: a FasterSeg cell op, ConvNorm, head, feature fusion, or glue
    (`resize` x`stride` bilinear upsampling of cin channels, `concat` of cin and cout - cin
    channels, the per-call `overhead`)."""
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
        if self.kind == "overhead":
            return "overhead"
        if self.kind == "resize":
            return f"resize_{size}_C{self.cin}_x{self.stride}"
        if self.kind == "concat":
            return f"concat_{size}_Cin{self.cin}_Cout{self.cout}"
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
        if key == "overhead":
            return OVERHEAD
        match = _KEY_RE.match(key)
        if not match:
            raise ValueError(f"not a FasterSeg latency key: {key!r}")
        g = match.groupdict()
        cin = int(g["cin"])
        stride = int(g["factor"] or g["stride"] or 1)
        return OpSpec(g["kind"], int(g["h"]), int(g["w"]), cin, int(g["cout"] or cin),
                      stride, int(g["kernel"] or 3))

    def timed_function(self):
        """(fn, input): what the table times for this configuration."""
        inputs = tf.random.normal([1, self.height, self.width, self.cin], seed=0)
        if self.kind == "overhead":
            return (lambda x: x + 1.0), inputs
        if self.kind == "resize":
            size = (self.height * self.stride, self.width * self.stride)
            return (lambda x: ops_lib.deployed_resize(x, size)), inputs
        if self.kind == "concat":
            other = tf.random.normal([1, self.height, self.width, self.cout - self.cin], seed=1)
            return (lambda x: tf.concat([x, other], -1)), inputs
        layer = self.build_layer()
        layer(inputs, training=False)   # creates the weights
        return timing.frozen_call(layer), inputs

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


OVERHEAD = OpSpec("overhead", 1, 1, 1, 1)


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return "GPU:" + details.get("device_name", gpus[0].name)
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), model)
    return f"CPU:{model}:{os.cpu_count()} cores"


def time_specs(specs, runtime: str = "tf", runs: int = 5, warmup: int = 2,
               clock: str = "wall") -> list:
    """Median ms (`clock`) of one batch-1 call of each configuration compiled for `runtime`,
    less the per-call overhead timed in the same rounds (counted once per network instead; for
    OVERHEAD itself: that overhead). Timed round-robin, every entry until its calls add up to
    50 ms (at most 1000 rounds): on the loaded 2-core machine a busy spell slows even CPU time
    (caches, memory bandwidth), and two tables timed entry after entry one after the other gave
    26 demo-size networks totals 25% apart, ranked alike with rho 0.46 only."""
    timed = [s for s in specs if s.kind != "overhead" and not
             (s.kind == "FactorizedReduce" and s.stride == 1)]
    runners = [timing.compile_for(runtime, *spec.timed_function()) for spec in timed]
    runners.append(timing.compile_for(runtime, *OVERHEAD.timed_function()))
    medians = timing.interleaved_medians(runners, runs, warmup, clock, min_total_ms=50.0,
                                         max_runs=1000)
    overhead = medians[-1]
    measured = {spec: max(0.0, ms - overhead) for spec, ms in zip(timed, medians)}
    # a stride-1 skip is the identity in the derived network (FasterSeg measures one, too)
    return [overhead if s.kind == "overhead" else measured.get(s, 0.0) for s in specs]


def this_device_meta(runtime: str, height: int, width: int, runs: int, warmup: int,
                     clock: str = "wall") -> dict:
    timing.clock_for(clock)
    if clock == "cpu" and tf.config.list_physical_devices("GPU"):
        raise ConfigError("--latency_clock=cpu counts CPU time only; time a GPU with "
                          "--latency_clock=wall")
    return {"format": FORMAT, "device": device_name(), "runtime": runtime, "clock": clock,
            "tensorflow": tf.__version__, "height": height, "width": width, "batch": 1,
            # TF's intra-op threads (0: TF's default, every core)
            "threads": (timing.num_threads() if runtime == "tflite"
                        else tf.config.threading.get_intra_op_parallelism_threads()),
            "runs": runs, "warmup": warmup,
            "interpreter": timing.interpreter_name() if runtime == "tflite" else None}


class LatencyTable:
    """key -> milliseconds. `own`: measured here (meta names this device and a runtime); only
    an own table measures missing entries, when `measure_missing`."""

    def __init__(self, entries=None, meta=None, path=None, compat="faithful",
                 measure_missing=False):
        if compat not in COMPAT_MODES:
            raise ConfigError(f"--latency_compat={compat!r}: expected one of {COMPAT_MODES}")
        self.entries = {str(k): float(v) for k, v in (entries or {}).items()}
        self.meta = dict(meta or {})
        self.path, self.compat, self.measure_missing = path, compat, measure_missing

    def __len__(self):
        return len(self.entries)

    def __contains__(self, spec):
        return self.key(spec) in self.entries

    @property
    def own(self) -> bool:
        return (self.meta.get("runtime") in timing.RUNTIMES
                and self.meta.get("device") == device_name())

    @property
    def has_glue(self) -> bool:
        """Whether sums include overhead, resizes and concats (tables timed by lbt_tf)."""
        return self.own or OVERHEAD.key in self.entries

    def calibrated(self, table_sum_ms: float) -> float:
        """A derived network's predicted ms from its sum of entries: offset + scale * sum with
        this table's calibration (`calibrate`), the sum itself without one (other devices'
        tables, FasterSeg's)."""
        fit = self.meta.get("calibration")
        return float(fit["offset_ms"] + fit["scale"] * table_sum_ms) if fit else table_sum_ms

    def key(self, spec) -> str:
        spec = spec if isinstance(spec, OpSpec) else OpSpec.from_key(spec)
        if self.compat == "fasterseg" and spec.kind == "BasicResidual_downup_2x":
            spec = dataclasses.replace(spec, kind="BasicResidual2x")
        return spec.key

    def get(self, spec) -> float:
        key = self.key(spec)
        if key not in self.entries:
            if not (self.measure_missing and self.own):
                where = self.path or "<in memory>"
                raise LatencyTableError(
                    f"latency table {where} (device {self.meta.get('device', 'unknown')}) has "
                    f"no entry {key!r}" + ("" if self.own else
                                           "; a table from another device is never topped up "
                                           "with entries timed here"))
            self.entries[key] = self.measure(OpSpec.from_key(key))
        return self.entries[key]

    def measure(self, spec: OpSpec) -> float:
        """This device's ms for spec, less the per-call overhead (counted once per network)."""
        return self.measure_many([spec])[0]

    def measure_many(self, specs) -> list:
        runs, warmup = int(self.meta.get("runs", 5)), int(self.meta.get("warmup", 2))
        return time_specs(specs, self.meta["runtime"], runs, warmup,
                          self.meta.get("clock", "wall"))

    def ensure(self, specs, progress_every: int = 25, chunk: int = 64) -> int:
        """Measures every spec not yet in the table, round-robin in chunks of `chunk` (a chunk's
        compiled functions or interpreters are held at once), printing progress; returns how
        many. One spec (the anchor) is timed again in every later chunk and that chunk's entries
        are scaled by its ratio, so a busy spell during one chunk does not make all its entries
        dearer than the others'."""
        missing = sorted({OpSpec.from_key(self.key(s)) for s in specs} - {OVERHEAD},
                         key=lambda s: s.key)
        missing = [s for s in missing if s.key not in self.entries]
        if OVERHEAD.key not in self.entries:
            missing.append(OVERHEAD)
        anchor = next((s for s in missing if s.kind in _CELL_KINDS[1:]),
                      missing[0] if missing else None)
        start, anchor_ms = time.perf_counter(), None
        for first in range(0, len(missing), chunk):
            part = missing[first:first + chunk]
            if anchor not in part:
                part = [anchor] + part
            timed = dict(zip(part, self.measure_many(part)))
            scale = 1.0
            if anchor_ms is None:
                anchor_ms = timed[anchor]
            elif timed[anchor] > 0 and anchor_ms > 0:
                scale = anchor_ms / timed[anchor]
            for spec, ms in timed.items():
                if spec.key not in self.entries:
                    self.entries[spec.key] = ms if spec.kind == "overhead" else ms * scale
            done = min(first + chunk, len(missing))
            if progress_every:
                elapsed = time.perf_counter() - start
                print(f"latency table ({self.meta.get('runtime')}): measured {done}/"
                      f"{len(missing)} in {elapsed:.0f} s, about "
                      f"{elapsed / done * (len(missing) - done):.0f} s left", flush=True)
        self.retime_outliers([s for s in missing if s.kind != "overhead"])
        return len(missing)

    def retime_outliers(self, specs, factor: float = 20.0):
        """Times again, keeping the smaller, every entry over `factor` x the median ms per unit
        of work of its kind: on a shared machine a busy spell can cover a whole timing window
        (seen: a 0.09 ms 1x1 conv stored as 144 ms)."""
        def work(s):
            return s.height * s.width * (s.cin * s.cout * s.kernel ** 2 / s.stride ** 2 + s.cin)
        ratios = {s: self.entries[s.key] / work(s) for s in specs if self.entries[s.key] > 0}
        suspicious = [s for s, r in ratios.items() if r > factor * float(np.median(
            [q for t, q in ratios.items() if t.kind == s.kind]))]
        for spec in suspicious:
            self.entries[spec.key] = min(self.entries[spec.key], self.measure(spec))
        if suspicious:
            print(f"latency table: re-timed {len(suspicious)} outlier entries", flush=True)

    def save(self, path=None):
        path = path or self.path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump({"meta": self.meta, "entries": dict(sorted(self.entries.items()))}, f,
                      indent=1)

    @staticmethod
    def load(path: str, **kwargs) -> "LatencyTable":
        """Our JSON ({"meta", "entries"}) or FasterSeg's plain key -> ms JSON."""
        try:
            with open(path) as f:
                raw = json.load(f)
        except (OSError, ValueError) as err:
            raise LbtError(f"latency table {path}: cannot read JSON ({err})") from None
        if not isinstance(raw, dict):
            raise LbtError(f"latency table {path}: expected a JSON object")
        entries, meta = (raw["entries"], raw.get("meta", {})) if "entries" in raw else (raw, {})
        try:
            return LatencyTable(entries, meta, path=path, **kwargs)
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
            specs.append(OpSpec(_CELL_KINDS[cell.op], h, w, cell.cin, cell.cout, cell.stride))
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


def fit_calibration(table, table_sums, measured, seed=0):
    """Fits whole-network ms = offset + scale * table sum and stores it in the table's meta
    ("calibration", with the points). Why a fit: ops timed one per call are not what they cost
    inside a network (on the 2-core machine TFLite networks at 64x128 ran 1.6x their op sum, TF
    at 256x512 0.9x: the per-call work of a runtime is shared by the ops of one call, caches
    differ), but the difference is nearly affine in the sum, so one fit per device, runtime,
    size and clock keeps the sum's ranking and gives it the networks' scale."""
    scale, offset = np.polyfit(table_sums, measured, 1)
    table.meta.pop("calibration", None)
    if scale <= 0:
        # seen with 3 networks of near-equal cost timed 3 times on the loaded machine
        logging.warning("latency table %s: calibration networks' measured ms %s do not grow "
                        "with their table sums %s (the machine too busy, or the networks too "
                        "alike); predicting plain table sums", table.path,
                        np.round(measured, 3).tolist(), np.round(table_sums, 3).tolist())
        return None
    table.meta["calibration"] = {"offset_ms": float(offset), "scale": float(scale),
                                 "networks": len(measured), "seed": seed,
                                 "table_sum_ms": [float(v) for v in table_sums],
                                 "measured_ms": [float(v) for v in measured]}
    return table.meta["calibration"]


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
