"""Atomic JSON writes: a kill leaves the old file or the new one, never half of one (a resumed
run trusts what it finds)."""
from __future__ import annotations

import json
import os


def write_json(path: str, value, **dump_kwargs) -> None:
    """`json.dump(value, **dump_kwargs)` into `path` through a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w") as f:
        json.dump(value, f, **dump_kwargs)
    os.replace(partial, path)
