"""Is the argmax of the architecture parameters a decision or noise?

Two statistics per kind of arch variable (alpha ops, beta downsampling, gamma widths), from the
per-epoch snapshots a search writes (`arch_history`: [{"epoch", "arch_values": {name: rows}}]):
- `seed_agreement`: over the rows, the fraction of seed pairs whose final argmax is the same
  (1 = every seed picks the same choice; chance = 1 / choices for independent uniform picks).
- `late_stability`: the fraction of rows whose argmax stays the same over the last quarter of
  the search epochs (from the snapshot just before that quarter to the final one).
"""
from __future__ import annotations

import itertools
import math
from typing import Dict, List, Sequence

import numpy as np


def variable_kind(name: str) -> str:
    """alpha | beta | gamma (or the name's prefix) of an arch variable name like "alpha_1"."""
    return name.split("/")[-1].split(":")[0].split("_")[0]


def row_argmax(values: Dict[str, Sequence]) -> Dict[str, np.ndarray]:
    """name -> argmax of every row (the last axis holds the choices)."""
    result = {}
    for name, value in values.items():
        array = np.asarray(value, np.float64)
        result[name] = array.reshape(-1, array.shape[-1]).argmax(-1)
    return result


def seed_agreement(finals: List[Dict[str, Sequence]]) -> Dict[str, float]:
    """kind -> mean over rows and seed pairs of [argmax equal]; needs >= 2 seeds."""
    if len(finals) < 2:
        raise ValueError(f"seed agreement needs at least 2 searches, got {len(finals)}")
    argmaxes = [row_argmax(values) for values in finals]
    agree: Dict[str, List[float]] = {}
    for name in sorted(argmaxes[0]):
        for a, b in itertools.combinations(argmaxes, 2):
            agree.setdefault(variable_kind(name), []).extend((a[name] == b[name]).tolist())
    return {kind: float(np.mean(flags)) for kind, flags in agree.items()}


def late_stability(arch_history: List[Dict], search_epochs: int,
                   fraction: float = 0.25) -> Dict[str, float]:
    """kind -> fraction of rows with one argmax over the last `fraction` of the search epochs.

    `arch_history` holds one snapshot per epoch (warm-up first; the last `search_epochs` are
    the search). The window is the last ceil(fraction * search_epochs) epochs plus the snapshot
    before them, so a row counts as stable only if it did not change inside the window."""
    if search_epochs < 1 or len(arch_history) < search_epochs:
        raise ValueError(f"need {search_epochs} search epochs of arch history, got "
                         f"{len(arch_history)}")
    last = max(1, math.ceil(fraction * search_epochs))
    window = arch_history[-(last + 1):]
    argmaxes = [row_argmax(h["arch_values"]) for h in window]
    stable: Dict[str, List[bool]] = {}
    for name in sorted(argmaxes[-1]):
        rows = np.stack([a[name] for a in argmaxes])           # [snapshots, rows]
        stable.setdefault(variable_kind(name), []).extend((rows == rows[-1]).all(0).tolist())
    return {kind: float(np.mean(flags)) for kind, flags in stable.items()}


def chance_agreement(values: Dict[str, Sequence]) -> Dict[str, float]:
    """kind -> the pairwise agreement of independent uniform picks (1 / choices)."""
    return {variable_kind(name): 1.0 / np.shape(value)[-1] for name, value in values.items()}


__all__ = ["variable_kind", "row_argmax", "seed_agreement", "late_stability",
           "chance_agreement"]
