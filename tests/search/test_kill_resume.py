"""A real `kill -9` during `python -m lbt_tf.main --mode=search` (real tiny supernet), then
`--resume`: the search continues from the last checkpointed epoch, finishes, loses <= 1 epoch."""
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
from lbt_tf.models.fasterseg import latency as latency_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_EPOCHS = 6  # 1 warm-up + 5 search: the run is still going when epoch 1 is checkpointed
SIZES = {"teacher.layers": 4, "teacher.base_width": 2, "data.image_height": 32,
         "data.image_width": 64, "data.crop_height": 32, "data.crop_width": 64,
         "data.num_classes": 19}  # the synthetic scenes have Cityscapes' 19 classes


def _write_latency_table(path):
    """A synthetic table for this device, so that no minutes go into measuring one."""
    config = config_lib.replace(config_lib.Config(), **SIZES)
    specs = latency_lib.supernet_specs(config.teacher, 32, 64, 19)
    meta = {"device": latency_lib.device_name(), "height": 32, "width": 64}
    entries = {s.key: 0.1 + (zlib.crc32(s.key.encode()) % 1000) / 100.0 for s in specs}
    latency_lib.LatencyTable(entries, meta).save(path)


def _command(run_dir, table, resume=False):
    return [sys.executable, "-m", "lbt_tf.main", "--mode=search", f"--run_dir={run_dir}",
            f"--latency_table={table}", "--num_classes=19", "--image_height=32",
            "--image_width=64", "--crop_height=32", "--crop_width=64", "--batch_size=2",
            "--synthetic_train_size=8", "--synthetic_val_size=2", "--synthetic_test_size=4",
            "--layers=4", "--base_width=2", "--search_mode=fasterseg", "--warmup_epochs=1",
            f"--search_epochs={TOTAL_EPOCHS - 1}", "--search_steps_per_epoch=2",
            "--log_every=0"] + (["--resume"] if resume else [])


def test_kill_9_then_resume_continues_from_the_last_checkpoint(tmp_path):
    run_dir, table = tmp_path / "run", str(tmp_path / "latency.json")
    _write_latency_table(table)
    checkpoint_dir = run_dir / "checkpoints"
    log = open(tmp_path / "killed.log", "w")
    process = subprocess.Popen(_command(run_dir, table), cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while tf.train.latest_checkpoint(str(checkpoint_dir)) is None:
            assert process.poll() is None, open(tmp_path / "killed.log").read()[-3000:]
            assert time.time() < deadline, "no epoch checkpoint within 240 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        log.close()
    assert process.returncode == -signal.SIGKILL  # killed, not finished
    saved_epoch = int(tf.train.latest_checkpoint(str(checkpoint_dir)).rsplit("-", 1)[1])
    with open(run_dir / "search_state.json") as f:
        reached = max(h["epoch"] for h in json.load(f)["history"])
    assert 1 <= saved_epoch < TOTAL_EPOCHS
    assert reached - saved_epoch <= 1  # at most the epoch in progress is lost

    resumed = subprocess.run(_command(run_dir, table, resume=True), cwd=REPO, timeout=300,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    match = re.search(r"search: resumed from \S+ at epoch (\d+)", resumed.stdout)
    assert match and int(match.group(1)) == saved_epoch, resumed.stdout[-3000:]
    assert f"Epoch {saved_epoch + 1}/{TOTAL_EPOCHS}" in resumed.stdout
    assert "Epoch 1/" not in resumed.stdout  # not restarted from 0
    assert tf.train.latest_checkpoint(str(checkpoint_dir)).endswith(f"-{TOTAL_EPOCHS}")
    with open(run_dir / "search_state.json") as f:
        history = json.load(f)["history"]
    assert [h["epoch"] for h in history] == list(range(1, TOTAL_EPOCHS + 1))
    assert (run_dir / "arch.json").exists()
