"""A real `kill -9` in the middle of an epoch of `python -m lbt_tf.main --mode=search` (real tiny
supernet, op determinism on, a checkpoint every step), then the same command again: it resumes
by itself (no --resume) from the checkpointed step, not the epoch's start, and ends with the
architecture JSON and every epoch's logged numbers (val mIoU included) of an uninterrupted run,
bit for bit; the same command with another learning rate is refused, naming the run dir and the
flag, and changes no file."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib

import tensorflow as tf

from lbt_tf import config as config_lib
from lbt_tf.models.fasterseg import latency as latency_lib, latency_table

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_EPOCHS = 3  # 1 warm-up + 2 search epochs: killed in epoch 2, after step 1 or 2
STEPS = 3  # per epoch; ckpt-N: after N steps
SIZES = {"teacher.layers": 4, "teacher.base_width": 2, "data.image_height": 32,
         "data.image_width": 64, "data.crop_height": 32, "data.crop_width": 64,
         "data.num_classes": 19}  # the synthetic scenes have Cityscapes' 19 classes


def _write_latency_table(path):
    """A synthetic table for this device, so that no minutes go into measuring one."""
    config = config_lib.replace(config_lib.Config(), **SIZES)
    specs = latency_lib.supernet_specs(config.teacher, 32, 64, 19)
    meta = {"device": latency_table.device_name(), "height": 32, "width": 64}
    entries = {s.key: 0.1 + (zlib.crc32(s.key.encode()) % 1000) / 100.0 for s in specs}
    latency_table.LatencyTable(entries, meta).save(path)


def _command(run_dir, table, *extra):
    return [sys.executable, "-m", "lbt_tf.main", "--mode=search", f"--run_dir={run_dir}",
            f"--latency_table={table}", "--num_classes=19", "--image_height=32",
            "--image_width=64", "--crop_height=32", "--crop_width=64", "--batch_size=2",
            "--synthetic_train_size=8", "--synthetic_val_size=2", "--synthetic_test_size=4",
            "--layers=4", "--base_width=2", "--search_mode=fasterseg", "--warmup_epochs=1",
            f"--search_epochs={TOTAL_EPOCHS - 1}", f"--search_steps_per_epoch={STEPS}",
            "--checkpoint_every_steps=1", "--log_every=0", "--deterministic", *extra]


def _steps_done(checkpoint_dir):
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    return int(latest.rsplit("-", 1)[1]) if latest else 0


def _history(run_dir):
    with open(os.path.join(run_dir, "search_state.json")) as f:
        return json.load(f)["history"]


def test_kill_9_then_the_same_command_resumes_exactly(tmp_path, directory_contents):
    run_dir, reference_dir = tmp_path / "run", tmp_path / "reference"
    table = str(tmp_path / "latency.json")
    _write_latency_table(table)
    logs = [open(tmp_path / name, "w") for name in ("reference.log", "killed.log")]
    # The uninterrupted run, alongside the one that is killed.
    reference = subprocess.Popen(_command(reference_dir, table), cwd=REPO, stdout=logs[0],
                                 stderr=subprocess.STDOUT)
    process = subprocess.Popen(_command(run_dir, table), cwd=REPO, stdout=logs[1],
                               stderr=subprocess.STDOUT)
    checkpoint_dir = str(run_dir / "checkpoints")
    try:
        deadline = time.time() + 400
        while _steps_done(checkpoint_dir) not in (STEPS + 1, STEPS + 2):  # inside epoch 2
            assert process.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
            assert time.time() < deadline, "no checkpoint in epoch 2 within 400 s"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    steps_done = _steps_done(checkpoint_dir)
    assert steps_done in (STEPS + 1, STEPS + 2), steps_done  # mid-epoch, not at an epoch end

    resumed = subprocess.run(_command(run_dir, table), cwd=REPO, timeout=500,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"search: {run_dir} holds a run of the same config; resuming it" in resumed.stdout
    match = re.search(r"search: resumed from \S+ at epoch (\d+) step (\d+)", resumed.stdout)
    assert match and (int(match.group(1)), int(match.group(2))) == (1, steps_done - STEPS), \
        resumed.stdout[-3000:]
    # from the checkpointed step: only the steps left of epoch 2, then epoch 3
    assert (f"search: finishing epoch 2 from step {steps_done - STEPS + 1} of {STEPS}"
            in resumed.stdout), resumed.stdout[-3000:]
    assert "Epoch 1/" not in resumed.stdout  # not restarted from 0
    assert reference.wait(timeout=500) == 0, open(tmp_path / "reference.log").read()[-3000:]
    for log in logs:
        log.close()

    # The same run: architecture (with its arch parameters) and every epoch's numbers.
    assert open(run_dir / "arch.json").read() == open(reference_dir / "arch.json").read()
    history, expected = _history(run_dir), _history(reference_dir)
    assert [h["epoch"] for h in history] == list(range(1, TOTAL_EPOCHS + 1))
    assert "val_teacher_miou" in history[-1]
    assert history == expected  # every logged number of every epoch, val mIoU included

    # Another learning rate in the same run dir: refused, nothing touched.
    before = directory_contents(run_dir)
    refused = subprocess.run(_command(run_dir, table, "--teacher_lr=0.02"), cwd=REPO,
                             timeout=300, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --run_dir: {run_dir} holds a search run of another config")
    assert "--teacher_lr: 0.01 (recorded) vs 0.02 (now)" in last and "--overwrite" in last
    assert directory_contents(run_dir) == before
