"""Checks of an architecture JSON: the schema (arch_schema.json, which documents the format) and
the rules between fields that a schema cannot state. Every failure is one ArchitectureError
naming the file and the offending field."""
from __future__ import annotations

import functools
import json
import os

import jsonschema

from lbt_tf.errors import ArchitectureError
from lbt_tf.models.fasterseg.operations import num_filters
from lbt_tf.models.fasterseg.space import OP_NAMES, OUTPUT_STRIDES

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "arch_schema.json")
WIDTH_TOLERANCE = 1e-6


@functools.lru_cache(maxsize=1)
def schema_validator():
    with open(SCHEMA_PATH) as f:
        return jsonschema.Draft202012Validator(json.load(f))


def min_cells(layers: int, scale: int) -> int:
    """Fewest cells FasterSeg's derivation keeps in a branch ending at `scale`: it removes at
    most len(path) - min_len skips, min_len = round(layers / 3) + 2 * scale (alphas2ops)."""
    return int(round(layers / 3.0)) + 2 * scale


def validate_architecture(arch, path="<architecture>"):
    """Returns `arch` if it is a valid architecture JSON, else raises ArchitectureError."""
    def fail(why):
        raise ArchitectureError(f"{path}: invalid architecture JSON: {why}")

    error = jsonschema.exceptions.best_match(schema_validator().iter_errors(arch))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        fail(f"at {where}: {error.message}")
    layers, strides = arch["layers"], arch["branch_output_strides"]
    widths_allowed = arch.get("width_mult_list")
    stem_ratio, head_ratio = arch["stem_head_width"]
    for stride in strides:
        if str(stride) not in arch["candidates"]:
            fail(f"branch_output_strides has {stride} but candidates has no branch {stride!r}")
    for name, branch in arch["candidates"].items():
        ops, cells, widths = branch["ops"], branch["path"], branch["widths"]
        scale = OUTPUT_STRIDES.index(int(name))
        if not len(ops) == len(cells) == len(widths) + 1:
            fail(f"branch {name}: need len(ops) == len(path) == len(widths) + 1, got "
                 f"{len(ops)}, {len(cells)}, {len(widths)}")
        steps = [b - a for a, b in zip(cells[:-1], cells[1:])]
        if cells[0] != 0 or any(s not in (0, 1) for s in steps) or cells[-1] != scale:
            fail(f"branch {name}: path {cells} must start at scale 0, step by 0 or 1 and end at "
                 f"scale {scale} (output stride {name})")
        fewest = min_cells(layers, scale)
        if len(cells) > layers or (fewest <= layers and len(cells) < fewest):
            fail(f"branch {name} has {len(cells)} cells but layers={layers} (a branch derived "
                 f"from {layers} layers has {min(fewest, layers)} to {layers} cells)")
        if widths_allowed is not None:
            odd = [w for w in widths
                   if min(abs(w - a) for a in widths_allowed) > WIDTH_TOLERANCE]
            if odd:
                fail(f"branch {name}: widths {odd} are not in width_mult_list {widths_allowed}")
        for i, op in enumerate(ops):
            downsamples = i + 1 < len(cells) and cells[i + 1] > cells[i]
            if op != OP_NAMES[0] or downsamples:
                continue  # a stride-2 skip is FactorizedReduce; only identities need one width
            cin = stem_ratio if i == 0 else widths[i - 1]
            cout = head_ratio if i == len(cells) - 1 else widths[i]
            channels = 8 * 2 ** cells[i]
            if num_filters(arch["base_width"], channels, cin) != \
                    num_filters(arch["base_width"], channels, cout):
                fail(f"branch {name}: cell {i} is a stride-1 skip from width {cin} to {cout} "
                     "(an identity keeps its width)")
    params = arch.get("arch_params") or {}
    if "alpha_0" in params and len(params["alpha_0"]) != layers:
        fail(f"arch_params alpha_0 has {len(params['alpha_0'])} rows but layers={layers}")
    return arch
