"""Choosing each cell's operator at the end of a search (--arch_selection).

argmax: the op with the largest α (FasterSeg, DARTS). perturbation: with the searched supernet
(T and A as the search left them), each α row is made one-hot on each op in turn (the rest of A
unchanged) and the supernet's val loss decides the row: the op whose row alone loses least
(after Wang et al., ICLR 2021, "Rethinking architecture selection in differentiable NAS"). At the
demo scale the argmax of a near-tied α does not rank the first cell as retraining does, the
one-hot losses do (docs/results/search_quality_features.md). Paths (β) and widths (γ) stay the
search's argmax. Skip competes only with `allow_skip`: one-hot skip passes the stem's features
through and loses least in every 1/8 row (measured), a network no other rule would derive.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from lbt_tf.models.fasterseg.space import OP_NAMES

# A one-hot row's logit: its softmax is 1 - 4e-9 on the chosen op, and derivation's argmax (and
# its skip rules, which rank by softmax) then follow the choice.
ONE_HOT_LOGIT = 20.0


def perturbation_selection(val_loss: Callable, arch: Sequence[tf.Tensor], names: Sequence[str],
                           batches: Sequence, allow_skip: bool = False
                           ) -> Tuple[Dict[str, np.ndarray], List[dict]]:
    """(arch values by name with every α row one-hot on its chosen op, one report per row).

    val_loss(batch, arch) -> scalar: the supernet's val loss at the given arch values; each
    candidate's loss is the mean over `batches`. `names`: the arch tensors' names (α ones start
    with "alpha")."""
    if not batches:
        raise ValueError("perturbation selection needs at least one val batch")
    arch = [tf.convert_to_tensor(a) for a in arch]
    chosen = {name: a.numpy().copy() for name, a in zip(names, arch)}
    for name, a in zip(names, arch):
        if name.startswith("alpha") and (len(a.shape) != 2 or a.shape[-1] != len(OP_NAMES)):
            raise ValueError(f"{name}: expected [rows, {len(OP_NAMES)}] op logits, got {a.shape}")
    first = 0 if allow_skip else 1   # OP_NAMES[0] is skip
    rows = []
    for index, name in enumerate(names):
        if not name.startswith("alpha"):
            continue
        for row in range(int(arch[index].shape[0])):
            losses = []
            for op in range(len(OP_NAMES)):
                one_hot = tf.one_hot(op, len(OP_NAMES), ONE_HOT_LOGIT, 0.0, dtype=arch[index].dtype)
                candidate = list(arch)
                candidate[index] = tf.tensor_scatter_nd_update(arch[index], [[row]], one_hot[None])
                losses.append(float(np.mean([float(val_loss(b, candidate)) for b in batches])))
            best = first + int(np.argmin(losses[first:]))
            chosen[name][row] = np.eye(len(OP_NAMES))[best] * ONE_HOT_LOGIT
            rows.append({"arch": name, "row": row, "losses": dict(zip(OP_NAMES, losses)),
                         "chosen": OP_NAMES[best],
                         "argmax": OP_NAMES[int(np.argmax(arch[index][row]))]})
    return chosen, rows
