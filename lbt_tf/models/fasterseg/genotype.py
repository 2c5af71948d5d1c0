"""Discrete architectures: derivation from the arch parameters, readable JSON, FasterSeg import.

Derivation follows FasterSeg's train/model_seg.py (`network_metas`) for each branch ending at
output stride 8, 16, 32 (scale `last` = 0, 1, 2): beta -> path (`betas2path`), gamma -> widths
(argmax per feature map), alpha -> ops (argmax, with the skip rules: no skip at a stride-2 step,
not all skips between two downsamplings, at most len(path) - min_len skips, and every kept skip
is removed from the path, "compacted"). FasterSeg derives the three branches in the order
8, 16, 32 on shared arrays that it changes in place: skips set to -inf stay -inf for the later
branches, and beta is softmax-ed once more before each branch (1x, 2x, 3x). Both quirks are
reproduced on purpose: the published architectures (arch_0/arch_1) depend on them.
The branch pair kept is [32, 8] or [32, 16] (`objective_acc_lat`, or fixed by
--branch_selection).

JSON form (format "lbt_tf/fasterseg-arch-v1"): layers, base_width, width_mult_list,
stem_head_width, ignore_skip, branch_output_strides (e.g. [32, 16]) and candidates
{"8"|"16"|"32": {"ops": [op names], "path": [scale per cell], "widths": [ratio per cell but
the last]}}, plus optional provenance (source, scores, arch_params).
"""
from __future__ import annotations

import copy
import json
import math
import os

import numpy as np

from lbt_tf.errors import ArchitectureError
from lbt_tf.models.fasterseg import arch_validation
from lbt_tf.models.fasterseg.space import OP_NAMES, OUTPUT_STRIDES, searched_widths

FORMAT = "lbt_tf/fasterseg-arch-v1"


def _softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def downs_to_path(downs):
    path = [0]
    for down in downs[:-1]:
        path.append(path[-1] + int(down))
    return path


def path_to_downs(path):
    return [int(b > a) for a, b in zip(path[:-1], path[1:])] + [0]


def betas_to_path(betas, last, layers):
    """FasterSeg's betas2path; betas = [None, softmax beta_1, softmax beta_2]."""
    downs = [0] * layers
    if last == 1:
        candidates = [b[0] for b in betas[1][1:-1]]
        downs[int(np.argmax(candidates)) + 1 if candidates else 1] = 1
    elif last == 2:
        max_prob, max_ij = 0.0, (0, 1)
        for j in range(layers - 4):
            for i in range(1, j - 1):
                prob = betas[1][i][0] * betas[2][j][0]
                if prob > max_prob:
                    max_ij, max_prob = (i, j), prob
        downs[max_ij[0] + 1] = 1
        downs[max_ij[1] + 2] = 1
    path = downs_to_path(downs)
    if path[-1] != last:
        # Too few layers for FasterSeg's rule (layers < 5): downsample as early as possible.
        downs = [1] * last + [0] * (layers - last)
        path = downs_to_path(downs)
    return path


def path_to_widths(path, ratios, width_mult_list):
    """Width of the output of every cell but the last (FasterSeg's path2widths)."""
    widths = []
    for layer in range(1, len(path)):
        scale = path[layer]
        row = layer - 1 if scale == 0 else layer - scale
        widths.append(float(width_mult_list[int(np.argmax(ratios[scale][row]))]))
    return widths


def alphas_to_ops(alphas, path, widths, ignore_skip=False):
    """FasterSeg's alphas2ops_path_width; changes `alphas` in place like FasterSeg."""
    assert len(path) == len(widths) + 1
    pos_alpha_skips = []
    min_len = int(np.round(len(path) / 3.0)) + path[-1] * 2
    for i, scale in enumerate(path):
        if ignore_skip:
            alphas[scale][i - scale][0] = -np.inf
        op = int(np.argmax(alphas[scale][i - scale]))
        if op == 0 and (i == len(path) - 1 or path[i] == path[i + 1]):
            pos_alpha_skips.append((i, _softmax(alphas[scale][i - scale])[0]))
    pos_skips = [pos for pos, _ in pos_alpha_skips]
    pos_downs = [pos for pos in range(len(path) - 1) if path[pos] < path[pos + 1]]
    if pos_downs:
        pos_downs.append(len(path))
        for pos1, pos2 in zip(pos_downs[:-1], pos_downs[1:]):
            # not all skips between two downsamplings (or the last one and the end)
            if (pos1 + 1 in pos_skips and pos2 - 1 in pos_skips and
                    pos_skips.index(pos2 - 1) - pos_skips.index(pos1 + 1) == pos2 - 1 - (pos1 + 1)):
                min_skip = [1.0, -1]
                for j in range(pos1 + 1, pos2):
                    score = _softmax(alphas[path[j]][j - path[j]])[0]
                    if score <= min_skip[0]:
                        min_skip = [score, j]
                alphas[path[min_skip[1]]][min_skip[1] - path[min_skip[1]]][0] = -np.inf
    if len(pos_alpha_skips) > len(path) - min_len:
        pos_alpha_skips = sorted(pos_alpha_skips, key=lambda x: x[1],
                                 reverse=True)[:len(path) - min_len]
    pos_skips = [pos for pos, _ in pos_alpha_skips]
    ops, path_compact, widths_compact = [], [], []
    for i, scale in enumerate(path):
        op = int(np.argmax(alphas[scale][i - scale]))
        if op == 0:
            if i in pos_skips:
                if i == len(path) - 1:
                    widths_compact = widths_compact[:-1]
                continue
            alphas[scale][i - scale][0] = -np.inf
            op = int(np.argmax(alphas[scale][i - scale]))
        path_compact.append(scale)
        if i < len(widths):
            widths_compact.append(widths[i])
        ops.append(op)
    return ops, path_compact, widths_compact


def derive_candidates(alphas, betas, ratios, width_mult_list, layers, ignore_skip=False):
    """{"8"|"16"|"32": {"ops", "path", "widths"}}, the three branches in FasterSeg's order."""
    alphas = [np.array(a, np.float64) for a in alphas]      # shared and changed in place
    betas = [None, np.array(betas[1], np.float64), np.array(betas[2], np.float64)]
    candidates = {}
    for last in range(3):
        betas[1], betas[2] = _softmax(betas[1]), _softmax(betas[2])   # FasterSeg's in-place softmax
        path = betas_to_path(betas, last, layers)
        widths = path_to_widths(path, ratios, width_mult_list)
        ops, path, widths = alphas_to_ops(alphas, path, widths, ignore_skip)
        candidates[str(OUTPUT_STRIDES[last])] = {
            "ops": [OP_NAMES[o] for o in ops], "path": [int(p) for p in path],
            "widths": [float(w) for w in widths]}
    return candidates


def objective_acc_lat(acc, lat, lat_target=8.3, alpha=-0.07, beta=-0.07):
    """FasterSeg's accuracy-latency objective (tools/utils/darts_utils.py)."""
    return acc * math.pow(lat / lat_target, alpha if lat <= lat_target else beta)


def choose_branches(branch_selection, scores=None):
    """[32, 8] or [32, 16]; acc_lat uses scores mIoU02/mIoU12/latency02/latency12 (FasterSeg)."""
    if branch_selection == "strides_8_32":
        return [32, 8]
    if branch_selection == "strides_16_32":
        return [32, 16]
    if branch_selection != "acc_lat":
        raise ArchitectureError(f"--branch_selection={branch_selection!r}: expected acc_lat, "
                                "strides_8_32 or strides_16_32")
    scores = scores or {}
    obj02 = objective_acc_lat(scores.get("mIoU02", 1.0), scores.get("latency02", 1.0))
    obj12 = objective_acc_lat(scores.get("mIoU12", 1.0), scores.get("latency12", 1.0))
    return [32, 8] if obj02 > obj12 else [32, 16]


def _arch_arrays(source):
    """name -> numpy array from a supernet, a dict of arrays or tensors."""
    if hasattr(source, "arch_values_dict"):
        return {k: np.array(v) for k, v in source.arch_values_dict().items()}
    if isinstance(source, dict):
        return {k: np.array(v) for k, v in source.items()}
    raise ArchitectureError("derive_architecture needs a supernet or a dict name -> array")


def derive_architecture(source, teacher_config, branch_scores=None, ignore_skip=None,
                        branch_selection=None):
    """The discrete architecture (JSON-able dict) from a supernet or its arch values.

    ignore_skip defaults to `not search_widths` (FasterSeg derives its teacher, arch_0, with
    ignore_skip). branch_scores: optional mIoU02/mIoU12/latency02/latency12 for acc_lat.
    """
    arrays = _arch_arrays(source)
    layers = int(np.shape(arrays["alpha_0"])[0])
    widths = searched_widths(teacher_config)
    if ignore_skip is None:
        ignore_skip = not teacher_config.search_widths
    if "gamma_0" in arrays:
        ratios = [arrays["gamma_0"], arrays["gamma_1"], arrays["gamma_2"]]
    else:
        ratios = [np.zeros((layers - 1, 1)), np.zeros((layers - 1, 1)), np.zeros((layers - 2, 1))]
        widths = (1.0,)
    alphas = [arrays["alpha_0"], arrays["alpha_1"], arrays["alpha_2"]]
    betas = [None, arrays["beta_1"], arrays["beta_2"]]
    arch = {
        "format": FORMAT, "layers": layers, "base_width": int(teacher_config.base_width),
        "width_mult_list": [float(w) for w in widths],
        "stem_head_width": [float(r) for r in teacher_config.stem_head_width],
        "ignore_skip": bool(ignore_skip),
        "branch_output_strides": choose_branches(
            branch_selection or teacher_config.branch_selection, branch_scores),
        "candidates": derive_candidates(alphas, betas, ratios, widths, layers, ignore_skip),
        "source": "derived from supernet arch parameters",
        "arch_params": {k: np.asarray(v).tolist() for k, v in arrays.items()},
    }
    if branch_scores:
        arch["scores"] = {k: float(v) for k, v in branch_scores.items()}
    return validate_architecture(arch, "<derived>")


def import_fasterseg(path, base_width=12, stem_head_width=None, ignore_skip=None):
    """FasterSeg's arch_0 / arch_1 (as JSON: alpha_a_s, beta_a_s, ratio_a_s, mIoU*, latency*).

    As FasterSeg's train.py: arch_0 is the teacher (full width, stem/head 1.0, ignore_skip),
    arch_1 the student (stem/head 8/12); a single ratio column means widths [1.0] with
    ignore_skip, else [4/12] (FasterSeg's Network_Multi_Path_Infer).
    """
    try:
        with open(path) as f:
            raw = json.load(f)
    except (OSError, ValueError) as err:
        raise ArchitectureError(f"{path}: cannot read FasterSeg architecture JSON ({err})") from None
    index = next((k.split("_")[1] for k in raw if k.startswith("alpha_")), None)
    needed = [f"{p}_{index}_{s}" for p, ss in (("alpha", (0, 1, 2)), ("beta", (1, 2)),
                                               ("ratio", (0, 1, 2))) for s in ss]
    missing = [k for k in needed if k not in raw] if index is not None else ["alpha_*"]
    if missing:
        raise ArchitectureError(f"{path}: not a FasterSeg architecture, missing {missing}")
    teacher = index == "0"
    if ignore_skip is None:
        ignore_skip = teacher
    if stem_head_width is None:
        stem_head_width = (1.0, 1.0) if teacher else (8.0 / 12, 8.0 / 12)
    alphas = [np.array(raw[f"alpha_{index}_{s}"], np.float64) for s in range(3)]
    betas = [None] + [np.array(raw[f"beta_{index}_{s}"], np.float64) for s in (1, 2)]
    ratios = [np.array(raw[f"ratio_{index}_{s}"], np.float64) for s in range(3)]
    layers = alphas[0].shape[0]
    if ratios[0].shape[1] == 1:
        widths = (1.0,) if ignore_skip else (4.0 / 12,)
    else:
        widths = tuple(4.0 / 12 + k * 2.0 / 12 for k in range(ratios[0].shape[1]))
    scores = {k: float(raw[k]) for k in ("mIoU02", "mIoU12", "latency02", "latency12") if k in raw}
    arch = {
        "format": FORMAT, "layers": int(layers), "base_width": int(base_width),
        "width_mult_list": [float(w) for w in widths],
        "stem_head_width": [float(r) for r in stem_head_width],
        "ignore_skip": bool(ignore_skip),
        "branch_output_strides": choose_branches("acc_lat", scores),
        "candidates": derive_candidates(alphas, betas, ratios, widths, layers, ignore_skip),
        "source": f"FasterSeg {os.path.basename(path)}", "scores": scores,
    }
    return validate_architecture(arch, path)


def validate_architecture(arch, path="<architecture>"):
    """Checks the JSON form (arch_schema.json + cross-field rules); raises ArchitectureError."""
    return arch_validation.validate_architecture(arch, path)


def save_architecture(arch, path):
    validate_architecture(arch, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(arch, f, indent=1)


def load_architecture(path):
    if not path or not os.path.exists(path):
        raise ArchitectureError(f"--arch={path}: no such architecture file")
    try:
        with open(path) as f:
            arch = json.load(f)
    except ValueError as err:
        raise ArchitectureError(f"{path}: not valid JSON ({err})") from None
    if isinstance(arch, dict) and "candidates" not in arch and any(k.startswith("alpha_") for k in arch):
        return import_fasterseg(path)   # FasterSeg's own arch JSON
    return validate_architecture(arch, path)


def op_indices(ops):
    return [OP_NAMES.index(op) for op in ops]
