"""The cold-start hold-out of ``docs/evaluation.md``: which items a run leaves out of KHQE fitting
(and so of training), and where the run records them (``RUN/holdout.json``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from onesearch_ray.io import read_json, write_json

HOLDOUT_COLD = "cold"
HOLDOUT_FILE = "holdout.json"


def is_cold_holdout(item_id: int) -> bool:
    """evaluation.md's rule: 1 item in 20 by a hash of its id, the same on every machine and run."""
    return int(hashlib.sha1(("cold:" + str(item_id)).encode()).hexdigest(), 16) % 20 == 0


def cold_holdout_mask(item_ids: Sequence[int]) -> np.ndarray:
    return np.fromiter((is_cold_holdout(int(i)) for i in item_ids), dtype=bool, count=len(item_ids))


def write_holdout(run: str | Path, item_ids: Sequence[int]) -> Path:
    path = Path(run) / HOLDOUT_FILE
    write_json(path, {"rule": HOLDOUT_COLD, "item_ids": [int(i) for i in item_ids]})
    return path


def read_holdout(run: str | Path) -> list[int]:
    path = Path(run) / HOLDOUT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: this run holds no item out (encode it with --holdout-cold)")
    return [int(i) for i in read_json(path)["item_ids"]]
