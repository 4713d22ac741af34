"""A/B metrics with bootstrap confidence intervals over the simulated users.

Per slice of the searches, each metric is a ratio of sums: orders and buyers (users with an order)
per 1,000 searches, CTR = clicks / impressions, CVR = orders / clicks, mean relevance (1..3) of the
items shown, and expected orders per 1,000 searches: the behaviour model's P(order) summed over the
items shown, the quantity the drawn orders sample, without the draws' noise (a paired difference of
a few percent that drawn orders cannot resolve in 2,000 searches shows in it). Intervals are
percentile intervals over ``bootstrap`` resamples of the slice's users (with replacement, all of a
user's searches together: a user's searches are not independent); differences against the control
use the same resamples for both systems (the traffic is shared, so the comparison is paired).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onesearch_ray.sim.session import OUTCOME_COLUMNS

METRICS = ("orders_per_1k", "buyers_per_1k", "ctr", "cvr", "mean_relevance", "expected_orders_per_1k")
# Per-user sums the metrics are ratios of.
_SUMS = ("searches", "impressions", "clicks", "orders", "buyers", "relevance_sum", "expected_orders")


@dataclass(frozen=True)
class Slice:
    """A subset of the searches; ``cold_items_only``: count only the cold items' impressions,
    clicks and orders (the cold-start item slice)."""

    name: str
    searches: np.ndarray  # bool per search
    cold_items_only: bool = False


def user_sums(outcomes: np.ndarray, users: np.ndarray, piece: Slice, n_users: int) -> np.ndarray:
    """(n_users, _SUMS) sums over the slice's searches of each user."""
    prefix = "cold_" if piece.cold_items_only else ""
    column = {name: i for i, name in enumerate(OUTCOME_COLUMNS)}
    rows, who = outcomes[piece.searches], users[piece.searches]
    sums = np.zeros((n_users, len(_SUMS)))
    np.add.at(sums[:, 0], who, 1.0)
    for j, name in (
        (1, "impressions"),
        (2, "clicks"),
        (3, "orders"),
        (5, "relevance_sum"),
        (6, "expected_orders"),
    ):
        np.add.at(sums[:, j], who, rows[:, column[prefix + name]])
    sums[:, 4] = sums[:, 3] > 0  # a buyer: at least one order in the slice
    return sums


def metric_values(sums: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric from summed columns (the last axis is _SUMS); NaN where undefined (0 / 0)."""
    s = {name: sums[..., i] for i, name in enumerate(_SUMS)}
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "orders_per_1k": 1000 * s["orders"] / s["searches"],
            "buyers_per_1k": 1000 * s["buyers"] / s["searches"],
            "ctr": s["clicks"] / s["impressions"],
            "cvr": s["orders"] / s["clicks"],
            "mean_relevance": s["relevance_sum"] / s["impressions"],
            "expected_orders_per_1k": 1000 * s["expected_orders"] / s["searches"],
        }


def _interval(samples: np.ndarray, confidence: float) -> tuple[float | None, float | None]:
    samples = samples[np.isfinite(samples)]
    if not len(samples):
        return None, None
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail])
    return float(low), float(high)


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compare(
    per_system: Mapping[str, np.ndarray],
    control: str,
    n_boot: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, dict]:
    """Metrics with intervals per system, and differences to ``control`` (absolute and relative),
    from per-user sums (``user_sums``) of one slice. Users without a search in it are left out."""
    active = per_system[control][:, 0] > 0
    n = int(active.sum())
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) if n else None
    control_point = metric_values(per_system[control][active].sum(axis=0))
    control_boot = _boot(per_system[control][active], weights)
    out: dict[str, dict] = {}
    for name, sums in per_system.items():
        point = metric_values(sums[active].sum(axis=0))
        boot = _boot(sums[active], weights)
        metrics, differences = {}, {}
        for metric in METRICS:
            low, high = _interval(boot[metric], confidence) if boot else (None, None)
            metrics[metric] = {"value": _finite(point[metric]), "low": low, "high": high}
            if name != control and boot:
                differences[metric] = _difference(
                    point[metric], control_point[metric], boot[metric], control_boot[metric], confidence
                )
        out[name] = {"metrics": metrics, "vs_control": differences}
    return out


def _boot(sums: np.ndarray, weights: np.ndarray | None) -> dict[str, np.ndarray] | None:
    return None if weights is None else metric_values(weights @ sums)


def _difference(
    value: float, control: float, boot: np.ndarray, control_boot: np.ndarray, confidence: float
) -> dict[str, float | None]:
    with np.errstate(divide="ignore", invalid="ignore"):
        low, high = _interval(boot - control_boot, confidence)
        rel_low, rel_high = _interval(100 * (boot / control_boot - 1), confidence)
        relative = 100 * (value / control - 1) if control else float("nan")
    return {
        "diff": _finite(value - control),
        "low": low,
        "high": high,
        "rel_pct": _finite(relative),
        "rel_low": rel_low,
        "rel_high": rel_high,
    }
