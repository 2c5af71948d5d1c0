"""Latency lookup tables (FasterSeg latency/latency_lookup_table.py): what an entry is, how it
is timed, stored, re-used and calibrated. Which entries the FasterSeg space needs, and the
latencies summed from them, are latency.py's.

(a) `LatencyTable`: milliseconds per operator configuration (`OpSpec`) under FasterSeg-style
    keys, e.g. `BasicResidual2x_H8_W16_Cin32_Cout32_stride1_dilation1`. This device's own table
    is timed the way the network runs (timing.py: compiled for `--latency_runtime`
    tf|xla|tflite, batch 1, warm-up, median; `time_specs`): each entry is the op's time minus
    the fixed per-call overhead, which is an entry of its own ("overhead") counted once per
    network, like the resizes and concats between the ops ("glue": `resize_*`, `concat_*`).
    The JSON's `meta` records device, runtime, TF version and size (`this_device_meta`); the
    file is re-used when they match (`REUSE_KEYS`).
(b) A table from another device (FasterSeg's 1080Ti JSON, key -> ms) is read as it is: never
    topped up with entries timed here (that would mix two devices' milliseconds in one sum); a
    missing key is an error naming key and table. It has no glue entries; its sums are
    FasterSeg's (ops, refines, fusion, head).
(c) `--latency_compat`: `faithful` reads every op under its own key; `fasterseg` reproduces
    FasterSeg's `forward_latency`, whose `BasicResidual_downup_2x` (conv_2x_downup) reads the
    `BasicResidual2x` entry of the same shape (a copy-paste slip in its operations.py).
(d) `fit_calibration`: whole-network ms = offset + scale * table sum, stored in the meta and
    applied by `LatencyTable.calibrated`.
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
from lbt_tf.models.fasterseg import operations as ops_lib, timing
from lbt_tf.models.fasterseg.space import OP_TABLE_NAMES

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
        if self.kind in OP_TABLE_NAMES:
            return ops_lib.CellOp(OP_TABLE_NAMES.index(self.kind), self.cout, self.stride)
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
        anchor = next((s for s in missing if s.kind in OP_TABLE_NAMES[1:]),
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

