"""Architecture JSON validation (issue 15, item 5): the schema file documents the format and is
what the loader checks; the cross-field rules reject every self-contradicting shape, naming the
file and the field. Derived and FasterSeg-imported architectures pass."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lbt_tf.config import TeacherConfig
from lbt_tf.errors import ArchitectureError
from lbt_tf.models.fasterseg import arch_validation, genotype
from lbt_tf.models.fasterseg.genotype import load_architecture
from lbt_tf.models.fasterseg.space import OP_NAMES

from .conftest import shared_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def good_arch():
    """Six layers, branches 32 (6 cells) and 8 (4 cells: two skips removed)."""
    return {"format": genotype.FORMAT, "layers": 6, "base_width": 4,
            "width_mult_list": [0.5, 1.0], "stem_head_width": [1.0, 1.0], "ignore_skip": False,
            "branch_output_strides": [32, 8],
            "candidates": {
                "32": {"ops": ["conv", "conv", "conv_2x", "conv", "conv", "conv"],
                       "path": [0, 0, 1, 1, 2, 2], "widths": [1.0, 0.5, 1.0, 0.5, 1.0]},
                "8": {"ops": ["conv", "conv_downup", "conv", "conv"], "path": [0, 0, 0, 0],
                      "widths": [0.5, 1.0, 0.5]}}}


def test_schema_names_the_code_vocabulary():
    schema = json.load(open(arch_validation.SCHEMA_PATH))
    assert tuple(schema["$defs"]["branch"]["properties"]["ops"]["items"]["enum"]) == OP_NAMES
    strides = schema["properties"]["branch_output_strides"]["items"]["enum"]
    assert tuple(strides) == genotype.OUTPUT_STRIDES
    assert schema["properties"]["format"]["const"] == genotype.FORMAT
    assert genotype.validate_architecture(good_arch()) == good_arch()


def _set(arch, keys, value):
    target = arch
    for key in keys[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return arch


_DELETE = object()


@pytest.mark.parametrize("keys,value,message", [
    # layers disagrees with the branches: 9 layers keep >= 7 cells in the stride-32 branch
    (("layers",), 9, "branch 32 has 6 cells but layers=9"),
    (("layers",), 5, "branch 32 has 6 cells but layers=5"),
    # one branch a cell short
    (("candidates", "32", "ops"), ["conv"] * 5, r"branch 32: need len\(ops\) == len\(path\)"),
    (("candidates", "8", "widths"), [0.5, 1.0], r"branch 8: need len\(ops\)"),
    # scales: unreachable end, jump by two, not starting at 0
    (("candidates", "32", "path"), [0, 0, 1, 1, 1, 1], "must start at scale 0.*end at scale 2"),
    (("candidates", "32", "path"), [0, 0, 0, 0, 2, 2], "step by 0 or 1"),
    (("candidates", "8", "path"), [1, 0, 0, 0], "must start at scale 0"),
    (("candidates", "8", "path"), [0, 0, 0, 3], "at candidates/8/path/3"),
    # widths and ops
    (("candidates", "8", "widths"), [0.5, 0.75, 0.5], r"widths \[0.75\] are not in"),
    (("candidates", "8", "widths"), [0.5, 1.5, 0.5], "at candidates/8/widths/1"),
    (("candidates", "8", "ops"), ["conv", "sep_conv", "conv", "conv"], "candidates/8/ops/1"),
    (("candidates", "8", "ops"), ["conv", "conv", "skip", "conv"],
     "cell 2 is a stride-1 skip from width 1.0 to 0.5"),
    # branch output strides
    (("branch_output_strides",), [32, 4], "at branch_output_strides/1"),
    (("branch_output_strides",), [32, 32], "branch_output_strides"),
    (("branch_output_strides",), [32, 16], "has 16 but candidates has no branch 16"),
    (("candidates", "64"), {"ops": ["conv"], "path": [0], "widths": []}, "candidates"),
    # missing, mistyped and misspelt keys
    (("candidates",), _DELETE, "'candidates' is a required property"),
    (("layers",), "6", "at layers: '6' is not of type 'integer'"),
    (("stem_head_width",), [1.0], "at stem_head_width"),
    (("lyers",), 6, "'lyers' was unexpected"),
    (("arch_params",), {"alpha_0": [[0.0] * 5] * 4}, "alpha_0 has 4 rows but layers=6"),
])
def test_each_rejected_shape_names_file_and_field(tmp_path, keys, value, message):
    path = tmp_path / "hand_edited.json"
    path.write_text(json.dumps(_set(copy.deepcopy(good_arch()), keys, value)))
    with pytest.raises(ArchitectureError, match=message) as raised:
        load_architecture(str(path))
    assert str(raised.value).startswith(f"{path}: invalid architecture JSON: ")


@pytest.mark.parametrize("layers", [4, 5, 6, 9, 16])
@pytest.mark.parametrize("search_widths", [True, False])
def test_every_derived_architecture_passes(layers, search_widths):
    """The cross-field rules (cell counts, widths) hold for FasterSeg's derivation."""
    rng = np.random.default_rng(layers)
    teacher = TeacherConfig(layers=layers, search_widths=search_widths)
    for _ in range(20):
        arrays = {f"alpha_{s}": 3 * rng.normal(size=(layers - s, len(OP_NAMES)))
                  for s in range(3)}
        arrays.update(beta_1=rng.normal(size=(layers - 2, 2)),
                      beta_2=rng.normal(size=(layers - 3, 2)))
        if search_widths:
            arrays.update({f"gamma_{s}": rng.normal(size=(layers - 1 - s // 2, 5))
                           for s in range(3)})
        genotype.derive_architecture(arrays, teacher)  # validates


@pytest.mark.parametrize("name", ["arch_0.json", "arch_1.json"])
def test_fasterseg_published_architectures_pass(name):
    arch = load_architecture(shared_file(name))
    assert arch["layers"] == 16


def test_main_train_rejects_bad_arch_before_work(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(_set(good_arch(), ("layers",), 9)))
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "lbt_tf.main", "--mode=train", f"--arch={path}",
         f"--run_dir={run_dir}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {path}: invalid architecture JSON: branch 32 has 6 cells")
    assert "Traceback" not in result.stderr and not run_dir.exists()
