"""Flags -> one frozen Config; invalid values give one clear error naming the flag."""
import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags

from lbt_tf import config as config_lib
from lbt_tf import flags as lbt_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(*argv):
    flag_values = flags.FlagValues()
    # Re-register every lbt_tf flag on a fresh FlagValues so tests do not share parsed state.
    for name in list(lbt_flags.FLAG_TABLE) + ["mode"]:
        flag_values[name] = flags.FLAGS[name]
    flag_values.unparse_flags()
    flag_values(["prog", *argv])
    return lbt_flags.build_config(flag_values)


@pytest.mark.parametrize("name", ["demo", "cityscapes_search"])
def test_shipped_flagfiles_build_configs(name):
    config = _parse(f"--flagfile={ROOT}/configs/{name}.flags")
    assert dataclasses.is_dataclass(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]
    if name == "cityscapes_search":
        assert (config.data.image_height, config.data.image_width) == (512, 1024)
        assert (config.data.crop_height, config.data.crop_width) == (224, 448)
        assert config.data.batch_size == 2 and config.search.epochs == 30
        assert config.data.num_classes == 19 and config.student.blocks_per_stage == (3, 4, 6, 3)
        # exact's teacher product one stage at a time: the setting's memory target (README)
        assert config.search.hypergrad == "exact" and config.search.arch_product == "layerwise"


def test_fractions_in_width_list_and_roundtrip_json():
    config = _parse("--width_mult_list=4/12,1", "--stem_head_width=8/12,8/12")
    assert config.teacher.width_mult_list == pytest.approx((1 / 3, 1.0))
    import json
    again = config_lib.Config.from_dict(json.loads(config.to_json()))
    assert again == config


@pytest.mark.parametrize("argv,flag_name", [
    (["--crop_height=-32"], "crop_height"),
    (["--crop_width=100"], "crop_width"),
    (["--teacher_fraction=1.5"], "teacher_fraction"),
    (["--search_mode=darts"], "search_mode"),
    (["--hypergrad=magic"], "hypergrad"),
    (["--arch_product=stagewise"], "arch_product"),
    (["--arch_selection=best"], "arch_selection"),
    (["--data_source=cityscapes"], "data_dir"),
    (["--student_output_stride=32"], "student_output_stride"),
    (["--num_classes=0"], "num_classes"),
    (["--arch_grad_batches=0"], "arch_grad_batches"),
    (["--num_classes=3"], "num_classes"),  # synthetic scenes carry the 19 Cityscapes ids
    (["--search_mode=lpt", "--recompute_activations"], "recompute_activations"),
])
def test_invalid_values_name_the_flag(argv, flag_name):
    with pytest.raises(config_lib.ConfigError, match=flag_name):
        _parse(*argv)


def test_replace_with_dotted_keys():
    config = config_lib.replace(config_lib.Config(), seed=3, **{"data.batch_size": 4})
    assert config.seed == 3 and config.data.batch_size == 4


def _run_main(*argv):
    return subprocess.run([sys.executable, "-m", "lbt_tf.main", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_main_reports_bad_flag_value_without_traceback():
    result = _run_main("--mode=splits", "--crop_width=100")
    assert result.returncode == 2
    assert "--crop_width=100" in result.stderr and "Traceback" not in result.stderr


def test_main_rejects_unknown_mode():
    result = _run_main("--mode=dance")
    assert result.returncode != 0 and "mode" in result.stderr and "Traceback" not in result.stderr
