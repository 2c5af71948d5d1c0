"""Derivation rules, JSON round trip, FasterSeg import and the derived network."""
import numpy as np
import pytest

from lbt_tf.config import ConfigError
from lbt_tf.errors import ArchitectureError
from lbt_tf.models.fasterseg import (build_derived_network, build_supernet, derive_architecture,
                                     import_fasterseg, load_architecture, save_architecture)
from lbt_tf.models.fasterseg.genotype import op_indices
from tests.fasterseg.conftest import shared_file, tiny_config

THIRD, TWO_THIRDS = 1 / 3, 2 / 3
# FasterSeg's Network_Multi_Path_Infer on arch_0.pt / arch_1.pt (ops, path, widths).
REFERENCE = {
    0: {"8": ([2, 4, 4, 4, 4, 4, 4, 4, 4, 4, 4, 3, 3, 4, 3, 3], [0] * 16, [1.0] * 15),
        "16": ([2, 4, 4, 4, 4, 3, 4, 2, 4, 4, 4, 4, 4, 4, 4, 4], [0] * 5 + [1] * 11, [1.0] * 15),
        "32": ([2, 4, 4, 4, 4, 4, 4, 2, 4, 4, 4, 4, 4, 4, 3, 3], [0] * 6 + [1] * 8 + [2] * 2,
               [1.0] * 15)},
    1: {"8": ([3, 3, 4, 4, 3, 3, 4, 3, 4], [0] * 9, [THIRD] * 7 + [1.0]),
        "16": ([3, 3, 4, 4, 3, 3, 4, 4, 4], [0] * 6 + [1] * 3, [THIRD] * 7 + [1.0]),
        "32": ([3, 3, 4, 2, 4, 4, 4, 4, 4, 4], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2],
               [THIRD] * 3 + [TWO_THIRDS] + [THIRD] * 5)},
}


@pytest.mark.parametrize("index", [0, 1])
def test_import_reproduces_fasterseg_ops_paths_widths(index):
    arch = import_fasterseg(shared_file(f"arch_{index}.json"))
    assert arch["branch_output_strides"] == [32, 16]
    assert arch["stem_head_width"] == ([1.0, 1.0] if index == 0 else [8 / 12, 8 / 12])
    for stride, (ops, path, widths) in REFERENCE[index].items():
        branch = arch["candidates"][stride]
        assert op_indices(branch["ops"]) == ops
        assert branch["path"] == path
        np.testing.assert_allclose(branch["widths"], widths)


@pytest.mark.parametrize("index,with_aux,without_aux", [(0, 23524137, 22188931),
                                                        (1, 4385689, 3454643)])
def test_derived_parameter_counts_match_fasterseg(index, with_aux, without_aux):
    arch = import_fasterseg(shared_file(f"arch_{index}.json"))
    full = build_derived_network(arch, 19, (64, 64, 3), base_width=12, aux_heads=True)
    assert full.count_params() == with_aux
    plain = build_derived_network(arch, 19, (64, 64, 3), base_width=12, aux_heads=False)
    assert plain.count_params() == without_aux


@pytest.mark.parametrize("size", [(32, 64), (64, 64), (96, 160)])
def test_derived_forward_shapes(size):
    arch = import_fasterseg(shared_file("arch_1.json"))
    net = build_derived_network(arch, 5, size + (3,), base_width=2)
    out = net(np.random.rand(2, *size, 3).astype("float32"), training=True)
    assert out["logits"].shape == (2, *size, 5)
    assert [a.shape for a in out["aux_logits"]] == [(2, *size, 5)] * 2
    assert np.all(np.isfinite(out["logits"].numpy()))


def test_derived_rejects_size_not_divisible_by_32():
    arch = import_fasterseg(shared_file("arch_1.json"))
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_derived_network(arch, 3, (48, 64, 3), base_width=2)


def test_derivation_json_round_trip_and_build(tmp_path):
    config = tiny_config(**{"teacher.layers": 6})
    supernet = build_supernet(config)
    rng = np.random.default_rng(0)
    for variable in supernet.arch_variables:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    arch = derive_architecture(supernet, config.teacher)
    for stride, branch in arch["candidates"].items():
        assert branch["path"][-1] == (8, 16, 32).index(int(stride))
        assert len(branch["ops"]) == len(branch["widths"]) + 1
        assert "skip" not in branch["ops"]   # FasterSeg's rules replace or remove every skip
    path = str(tmp_path / "arch.json")
    save_architecture(arch, path)
    assert load_architecture(path) == arch
    # the derived values equal a derivation from the raw arrays
    arrays = {k: np.array(v) for k, v in supernet.arch_values_dict().items()}
    assert derive_architecture(arrays, config.teacher)["candidates"] == arch["candidates"]
    net = build_derived_network(arch, 3, (32, 64, 3))
    assert net(np.zeros((1, 32, 64, 3), "float32"))["logits"].shape == (1, 32, 64, 3)


def test_branch_selection_flag(tmp_path):
    config = tiny_config(**{"teacher.layers": 5, "teacher.branch_selection": "strides_8_32"})
    arch = derive_architecture(build_supernet(config), config.teacher)
    assert arch["branch_output_strides"] == [32, 8]


def test_malformed_architecture_names_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"layers": 4, "base_width": 2, "stem_head_width": [1, 1], '
                   '"branch_output_strides": [32, 16], "candidates": {"32": {"ops": ["conv"], '
                   '"path": [0], "widths": []}}}')
    with pytest.raises(ArchitectureError, match="bad.json"):
        load_architecture(str(bad))
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ArchitectureError, match="junk.json"):
        load_architecture(str(tmp_path / "junk.json"))
    with pytest.raises(ArchitectureError, match="missing.json"):
        load_architecture(str(tmp_path / "missing.json"))
