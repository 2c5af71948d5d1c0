"""The LBT step under MirroredStrategy on 2 logical CPU devices (subprocess: device setup must
precede TensorFlow's initialisation)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("hypergrad", ["exact"])
def test_lbt_step_under_mirrored_strategy(hypergrad):
    proc = subprocess.run([sys.executable, "-m", "tests.search.distributed_check", hypergrad],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT")]
    assert proc.returncode == 0 and result, proc.stderr[-3000:]
    assert result[0] == ("RESULT changed=True finite=True skipped=1 unchanged_after_skip=True"), \
        result[0]
