"""Random architectures of the search space: valid, deterministic, latency-filtered."""
import numpy as np
import pytest

from lbt_tf.models.fasterseg import genotype, latency, sampling
from lbt_tf.models.fasterseg.latency_table import LatencyTable
from tests.fasterseg.conftest import tiny_config


def test_random_archs_are_valid_deterministic_and_varied():
    teacher = tiny_config(**{"teacher.layers": 6}).teacher
    archs = sampling.sample_architectures(teacher, 6, seed=3)
    assert [a["branch_output_strides"] for a in archs[:2]] == [[32, 8], [32, 16]]
    for arch in archs:
        genotype.validate_architecture(arch)   # raises on an invalid genotype
    again = sampling.sample_architectures(teacher, 6, seed=3)
    assert [a["candidates"] for a in again] == [a["candidates"] for a in archs]
    other = sampling.sample_architectures(teacher, 6, seed=4)
    assert [a["candidates"] for a in other] != [a["candidates"] for a in archs]
    assert len({str(a["candidates"]) for a in archs}) == 6


def test_latency_filter_keeps_the_band_around_the_reference():
    assert sampling.within_latency([8.0, 8.6, 10.0, 11.5, 11.6, 12.0], 10.0, 0.15) == [1, 2, 3]
    with pytest.raises(ValueError, match="positive"):
        sampling.within_latency([1.0], 0.0)


def test_filtered_random_archs_have_predicted_latency_in_band():
    """A table whose cost is the op's multiply count: the filter keeps exactly the random
    archs within the band around the reference, by the same prediction the bench uses (+-5%
    here: the stem and head, shared by all, make random archs' costs differ by ~+-10%)."""
    config = tiny_config(**{"teacher.layers": 6})
    archs = sampling.sample_architectures(config.teacher, 12, seed=0)
    specs = [s for a in archs for group in latency.derived_specs(a, 3, 32, 64).values()
             for s in group]
    table = LatencyTable({s.key: 1e-6 * s.cin * s.cout * s.height * s.width * s.kernel
                          for s in specs})
    predicted = [latency.derived_latency(a, table, 3, 32, 64)["total"] for a in archs]
    reference = float(np.median(predicted))
    kept = sampling.within_latency(predicted, reference, 0.05)
    assert kept and len(kept) < len(archs)
    assert all(abs(predicted[i] / reference - 1) <= 0.05 for i in kept)
    assert all(abs(predicted[i] / reference - 1) > 0.05 for i in set(range(12)) - set(kept))
