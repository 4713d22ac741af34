"""Code-quality metrics for semantic IDs (evaluation protocol, "Codes (KHQE)").

- CUR (codebook utilisation rate): used codes / possible codes, per level and per prefix depth.
- ICR (independent coding rate): share of items whose full SID belongs to them alone.
- Items per SID: mean and max collision-group size.
"""

from __future__ import annotations

import numpy as np


def code_metrics(codes: np.ndarray, level_sizes: tuple[int, ...] | list[int]) -> dict:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
        raise ValueError(f"codes shape {codes.shape} does not match {len(level_sizes)} levels")
    n = len(codes)
    cur_level = {
        f"level_{i + 1}": len(np.unique(codes[:, i])) / level_sizes[i] for i in range(len(level_sizes))
    }
    cur_prefix = {}
    for depth in range(1, len(level_sizes) + 1):
        possible = float(np.prod(level_sizes[:depth], dtype=np.float64))
        cur_prefix[f"prefix_{depth}"] = _count_unique_rows(codes[:, :depth]) / possible
    _, inverse, group_sizes = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    unique_items = int((group_sizes[inverse.ravel()] == 1).sum())
    return {
        "n_items": int(n),
        "n_sids": int(len(group_sizes)),
        "icr": unique_items / n if n else 0.0,
        "cur": {**cur_level, **cur_prefix},
        "items_per_sid": {
            "mean": float(group_sizes.mean()) if n else 0.0,
            "max": int(group_sizes.max(initial=0)),
        },
    }


def _count_unique_rows(rows: np.ndarray) -> int:
    return len(np.unique(rows, axis=0)) if len(rows) else 0
