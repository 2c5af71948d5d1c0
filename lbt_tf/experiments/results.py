"""Small shared helpers of the experiments: result JSON files, markdown tables, line plots."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from lbt_tf import json_files


def read_json(path: str) -> Dict:
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value: Dict) -> None:
    """Written to a temporary file and renamed, so an interrupted run never leaves half a
    result that a resumed run would trust."""
    json_files.write_json(path, value, indent=2, sort_keys=True, default=_jsonable)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def format_cell(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def markdown_table(rows: Iterable[Dict], columns: Sequence[Tuple[str, str, str]]) -> str:
    """A GitHub markdown table; `columns` are (key, header, format) triples."""
    lines = ["| " + " | ".join(header for _, header, _ in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row.get(key), fmt)
                                       for key, _, fmt in columns) + " |")
    return "\n".join(lines)


def val_miou_per_epoch(search_result) -> List[Optional[float]]:
    """The teacher's val mIoU after each search epoch (warm-up included), from the history."""
    return [None if epoch.get("val_teacher_miou") is None else float(epoch["val_teacher_miou"])
            for epoch in search_result.history]


def count_params(retrain_config) -> int:
    """Parameters of the retrained derived network (rebuilt at the evaluation size)."""
    from lbt_tf.retrain import network as network_lib
    data = retrain_config.data
    model, _ = network_lib.load_trained_network(retrain_config,
                                                (data.image_height, data.image_width))
    return int(model.count_params())


def plot_lines(path: str, series: Dict[str, Sequence[Optional[float]]], xlabel: str,
               ylabel: str, title: str) -> str:
    """One line per series against 1..n (missing values skipped)."""
    points = {name: [(i + 1, v) for i, v in enumerate(values or []) if v is not None]
              for name, values in series.items()}
    return plot_points(path, points, xlabel, ylabel, title)


def plot_points(path: str, series: Dict[str, Sequence[tuple]], xlabel: str, ylabel: str,
                title: str) -> str:
    """One line per series of (x, y) points, written as a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
