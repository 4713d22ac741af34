"""Calibrated CTR/CVR of OneSearch's PARS from impression, click and order counts.

``docs/onesearch.md`` section 3, exactly:

    T   = log((pos + 10)(clk + 10)(ord + 10))
    ctr = log(clk + 10) / T
    cvr = log(ord + 10) / log(clk + 10)
    r   = 2 * lambda * ctr * cvr / (ctr + cvr)

The +10 in every log is a prior count: an item never shown (0, 0, 0) gets ctr = 1/3, cvr = 1 and
r = lambda / 2, not the 100% CTR that one lucky click in one impression would give a raw ratio. Counts
come from the interactions table per item, or per (query, item) for query-dependent rates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.data.schemas import Event

PRIOR_COUNT = 10.0  # the paper's smoothing count, added to impressions, clicks and orders alike
COUNT_COLUMNS = ("impressions", "clicks", "orders")


class CalibratedRates(NamedTuple):
    ctr: np.ndarray
    cvr: np.ndarray
    reward: np.ndarray  # the scaled harmonic mean of ctr and cvr


def calibrated_rates(impressions, clicks, orders, lam: float = 1.0) -> CalibratedRates:
    """The calibrated rates of counts (arrays of one shape, or scalars), element-wise."""
    pos, clk, ord_ = (np.asarray(x, dtype=np.float64) for x in (impressions, clicks, orders))
    for name, values in zip(COUNT_COLUMNS, (pos, clk, ord_), strict=True):
        if not np.all(np.isfinite(values)) or np.any(values < 0):
            raise ValueError(f"calibrated_rates: {name} must be finite counts >= 0")
    log_pos, log_clk, log_ord = (np.log(x + PRIOR_COUNT) for x in (pos, clk, ord_))
    ctr = log_clk / (log_pos + log_clk + log_ord)  # log of the product, without overflowing it
    cvr = log_ord / log_clk
    return CalibratedRates(ctr, cvr, 2.0 * lam * ctr * cvr / (ctr + cvr))


def interaction_counts(interactions: pa.Table, keys: Sequence[str] = ("item_id",)) -> pa.Table:
    """Impressions, clicks and orders per ``keys`` (e.g. item_id, or query_id + item_id).

    Each event row counts once in its column: the synthetic log and the live feedback log write a
    SHOWN row for every impression and a CLICKED / ORDERED row for every click / order.
    """
    missing = [k for k in (*keys, "event") if k not in interactions.column_names]
    if missing:
        raise ValueError(f"interaction_counts: interactions lack column(s) {missing}")
    event = interactions["event"]
    flags = {
        name: pc.cast(pc.equal(event, int(kind)), pa.int64())
        for name, kind in zip(COUNT_COLUMNS, (Event.SHOWN, Event.CLICKED, Event.ORDERED), strict=True)
    }
    table = pa.table({**{k: interactions[k] for k in keys}, **flags})
    counts = table.group_by(list(keys)).aggregate([(name, "sum") for name in COUNT_COLUMNS])
    return pa.table({**{k: counts[k] for k in keys}, **{n: counts[f"{n}_sum"] for n in COUNT_COLUMNS}})


def lookup_counts(counts: pa.Table, keys: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(impressions, clicks, orders) for each row of ``keys`` (columns = the count keys), in its order;
    0 for keys never seen (new items), so they get the prior's rates."""
    key_names = keys.column_names
    indexed = keys.append_column("_row", pa.array(np.arange(keys.num_rows, dtype=np.int64)))
    joined = indexed.join(counts, key_names, join_type="left outer").sort_by("_row")
    impressions, clicks, orders = (
        pc.fill_null(joined[name], 0).to_numpy().astype(np.float64) for name in COUNT_COLUMNS
    )
    return impressions, clicks, orders
