"""Random architectures of the FasterSeg space, the baseline a search has to beat.

A random architecture is what derivation makes of random arch parameters (alpha, beta, gamma
drawn i.i.d. normal): the same rules (FasterSeg's skip rules, beta -> path, gamma -> widths) as
for a searched one, so both come from one distribution of valid networks. Random archs are
compared with found ones at equal cost: `within_latency` keeps those whose predicted latency is
within a tolerance of a reference (the median latency of the found networks).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from lbt_tf.models.fasterseg.genotype import derive_architecture
from lbt_tf.models.fasterseg.space import arch_variable_shapes, searched_widths

BRANCH_SELECTIONS = ("strides_8_32", "strides_16_32")


def random_arch_values(rng: np.random.Generator, teacher_config, scale: float = 2.0
                       ) -> Dict[str, np.ndarray]:
    """name -> random logits for every arch variable of the configured supernet."""
    shapes = arch_variable_shapes(teacher_config.layers, len(searched_widths(teacher_config)))
    return {name: rng.normal(scale=scale, size=shape) for name, shape in shapes.items()}


def sample_architectures(teacher_config, count: int, seed: int) -> List[dict]:
    """`count` random derived architectures, deterministic by `seed`; the branch pair
    alternates between [32, 8] and [32, 16] (the two pairs derivation can keep)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    rng = np.random.default_rng([int(seed), 0x5A3])
    archs = []
    for n in range(count):
        arch = derive_architecture(random_arch_values(rng, teacher_config), teacher_config,
                                   branch_selection=BRANCH_SELECTIONS[n % 2])
        arch["source"] = f"random (seed {seed}, #{n})"
        archs.append(arch)
    return archs


def within_latency(latencies_ms: Sequence[float], reference_ms: float,
                   tolerance: float = 0.15) -> List[int]:
    """Indices of the latencies within +-tolerance (relative) of `reference_ms`."""
    if reference_ms <= 0:
        raise ValueError(f"reference latency must be positive, got {reference_ms}")
    return [i for i, ms in enumerate(latencies_ms)
            if abs(float(ms) - reference_ms) <= tolerance * reference_ms]


__all__ = ["random_arch_values", "sample_architectures", "within_latency", "BRANCH_SELECTIONS"]
