"""Colourised label maps and image grids (`--mode=sample_grid` writes <run_dir>/samples.png)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from lbt_tf.data.labels import CITYSCAPES_PALETTE


def colorize(label_map, palette=CITYSCAPES_PALETTE) -> np.ndarray:
    """[H, W] class ids -> uint8 [H, W, 3]; ids outside the palette (ignore) are black."""
    labels = np.asarray(label_map).astype(np.int64)
    palette = np.asarray(palette, dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(palette))
    colors = np.zeros(labels.shape + (3,), np.uint8)
    colors[valid] = palette[labels[valid]]
    return colors


def save_grid(path: str, rows: Sequence[Sequence[Optional[np.ndarray]]],
              titles: Optional[Sequence] = None) -> str:
    """Writes a grid of uint8 RGB images (None leaves a cell empty). `titles`: one per column, or
    a list of lists (one per cell)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = len(rows)
    n_cols = max(len(row) for row in rows) if rows else 0
    if not n_rows or not n_cols:
        raise ValueError("save_grid needs at least one image")
    first = next(image for row in rows for image in row if image is not None)
    aspect = first.shape[1] / first.shape[0]
    figure, axes = plt.subplots(n_rows, n_cols, squeeze=False,
                                figsize=(2.2 * aspect * n_cols, 2.4 * n_rows))
    for r in range(n_rows):
        for c in range(n_cols):
            axis = axes[r][c]
            axis.axis("off")
            image = rows[r][c] if c < len(rows[r]) else None
            if image is not None:
                axis.imshow(np.asarray(image), interpolation="nearest")
            title = _title(titles, r, c)
            if title:
                axis.set_title(title, fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _title(titles, row, col):
    if not titles:
        return None
    if isinstance(titles[0], (list, tuple)):
        return titles[row][col] if row < len(titles) and col < len(titles[row]) else None
    return titles[col] if row == 0 and col < len(titles) else None


def run_sample_grid(config, images_per_split: int = 2) -> str:
    """`--mode=sample_grid`: a few whole images of every LBT split with their coloured labels."""
    from lbt_tf.data.pipeline import denormalize, make_dataset
    from lbt_tf.data.splits import make_splits

    data = config.data
    palette = CITYSCAPES_PALETTE[: data.num_classes] if data.num_classes <= len(
        CITYSCAPES_PALETTE) else _fallback_palette(data.num_classes)
    splits = make_splits(data, config.seed)
    rows, titles = [], []
    for name, source in splits.items():
        if not len(source):
            continue
        dataset = make_dataset(data, source.take(images_per_split), training=False)
        for batch in dataset:
            images = batch[0] if source.labeled else batch
            labels = batch[1].numpy() if source.labeled else None
            for i, image in enumerate(denormalize(images, data).numpy()):
                label = colorize(labels[i], palette) if labels is not None else None
                rows.append([image, label])
                titles.append([f"{name} image", f"{name} label" if label is not None
                               else f"{name}: unlabeled"])
    path = os.path.join(config.run_dir, "samples.png")
    save_grid(path, rows, titles)
    print(f"sample grid: {os.path.abspath(path)}")
    return path


def _fallback_palette(num_classes):
    """Distinct colours when a configuration has more classes than Cityscapes."""
    rng = np.random.default_rng(0)
    extra = rng.integers(0, 256, (num_classes - len(CITYSCAPES_PALETTE), 3), dtype=np.uint8)
    return np.concatenate([CITYSCAPES_PALETTE, extra])
