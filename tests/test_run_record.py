"""Safe reruns (issue 15, item 1): the same config in the same run dir resumes and says so;
another config is refused naming the dir and the differing flags, leaving every file as it
was; --overwrite replaces the earlier run."""
import os

import pytest

from lbt_tf import config as config_lib
from lbt_tf import run_record

OUTPUTS = ("checkpoints", "state.json")


def _start(tmp_path, **changes):
    config = config_lib.replace(config_lib.Config(), **changes)
    return run_record.start_or_resume(config, "search", str(tmp_path), OUTPUTS)


def _run_outputs(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "ckpt-1.index").write_bytes(b"weights")
    (tmp_path / "state.json").write_text("{}")


def test_same_config_resumes_and_says_so(tmp_path, capsys):
    assert _start(tmp_path) is False  # fresh: the record is written first
    _run_outputs(tmp_path)
    assert _start(tmp_path) is True
    assert f"search: {tmp_path} holds a run of the same config; resuming it" in \
        capsys.readouterr().out
    # display-only and tracing flags and the epoch count (a longer run) do not make another run
    assert _start(tmp_path, **{"search.log_every": 1, "data.validate_files": "full"}) is True
    assert _start(tmp_path, **{"teacher.cell_tracing": "per_cell",
                               "search.trace_once": True}) is True
    assert _start(tmp_path, **{"search.epochs": 40}) is True
    assert "--search_epochs: 30 (recorded) vs 40 (now)" in capsys.readouterr().out


def test_a_field_the_record_lacks_counts_as_its_default(tmp_path):
    """A run recorded before a flag existed resumes at the flag's default, not at another."""
    import json
    _start(tmp_path)
    _run_outputs(tmp_path)
    path = tmp_path / run_record.RECORD_NAME
    record = json.loads(path.read_text())
    del record["config"]["search.arch_grad_batches"]
    path.write_text(json.dumps(record))
    assert _start(tmp_path) is True
    with pytest.raises(config_lib.ConfigError, match="--arch_grad_batches: 1 .recorded. vs 4"):
        _start(tmp_path, **{"search.arch_grad_batches": 4})


def test_another_config_is_refused_and_nothing_changes(tmp_path, directory_contents):
    _start(tmp_path)
    _run_outputs(tmp_path)
    before = directory_contents(tmp_path)
    with pytest.raises(config_lib.ConfigError) as raised:
        _start(tmp_path, seed=1, **{"search.teacher_lr": 0.02, "data.batch_size": 4})
    message = str(raised.value)
    assert message.startswith(f"--run_dir: {tmp_path} holds a search run of another config")
    for part in ("--teacher_lr: 0.01 (recorded) vs 0.02 (now)",
                 "--batch_size: 2 (recorded) vs 4 (now)", "--seed: 0 (recorded) vs 1 (now)",
                 "--overwrite"):
        assert part in message, message
    assert directory_contents(tmp_path) == before


def test_overwrite_replaces_the_earlier_run(tmp_path, capsys):
    _start(tmp_path)
    _run_outputs(tmp_path)
    (tmp_path / "train").mkdir()  # another stage's outputs stay
    (tmp_path / "train" / "model.weights.h5").write_bytes(b"w")
    assert _start(tmp_path, overwrite=True, **{"search.teacher_lr": 0.02}) is False
    assert "--overwrite: removed the earlier run (checkpoints, state.json)" in \
        capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == [run_record.RECORD_NAME, "train"]
    assert _start(tmp_path, **{"search.teacher_lr": 0.02}) is True  # the new run's record


def test_unrecorded_outputs_are_refused_unless_resume_or_overwrite(tmp_path, directory_contents):
    _run_outputs(tmp_path)
    before = directory_contents(tmp_path)
    with pytest.raises(config_lib.ConfigError, match="already holds search outputs "
                                                     r"\(checkpoints, state.json\)"):
        _start(tmp_path)
    assert directory_contents(tmp_path) == before
    assert _start(tmp_path, resume=True) is True
    assert os.path.exists(tmp_path / run_record.RECORD_NAME)
