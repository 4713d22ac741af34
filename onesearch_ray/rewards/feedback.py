"""The six feedback levels of OneSearch's PARS, assigned from a track's interaction log.

Levels (``docs/onesearch.md`` section 3), best first, weights [2.0, 1.5, 1.0, 0.5, 0.2, 0.0] by default
(``RewardConfig.level_weights``):

1. ordered in this search;               4. shown in this search, not clicked;
2. same-category order elsewhere;        5. in the query's category, not shown;
3. clicked in this search, not ordered;  6. random item of another category.

A *search* is a session with a query (``query_id`` not null); browse sessions only feed level 2.
What the logs lack, and what stands in for it:

- level 2: an order by the same user in any *other* session (search or browse, earlier or later)
  of an item in the query's category; the synthetic log has no purchase journeys beyond one session,
  so this is all "elsewhere" can mean there;
- the query's category: the synthetic world's intent when given (``query_categories``), else the
  category with the most events for that query across the log, an order counting 3, a click 2 and an
  impression 1 (the logged ranker shows in-category items, users click them);
- levels 5 and 6 are not logged but sampled: ``n_same_category`` and ``n_other_category`` draws per
  search, uniform over the catalogue slice, draws that hit an item of the search (or repeat) dropped,
  so a search may get fewer;
- Home Depot has no log and Amazon's has no searches (reviews as orders, no query, no impressions):
  both get no rows here; their preferences come from judgments and from purchases as the positive.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.data.schemas import Event

DEFAULT_LEVEL_WEIGHTS = (2.0, 1.5, 1.0, 0.5, 0.2, 0.0)
FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("session_id", pa.int64(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("query_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("level", pa.int8(), nullable=False),
        pa.field("weight", pa.float64(), nullable=False),
    ]
)
_SEARCH_KEYS = ["session_id", "user_id", "query_id"]
_EMPTY_LEVELS = FEEDBACK_SCHEMA.empty_table().drop_columns(["weight"])


class FeedbackLevel(enum.IntEnum):
    ORDERED = 1
    ORDERED_ELSEWHERE = 2
    CLICKED = 3
    SHOWN = 4
    SAME_CATEGORY_NOT_SHOWN = 5
    OTHER_CATEGORY = 6


POSITIVE_LEVELS = frozenset({FeedbackLevel.ORDERED, FeedbackLevel.ORDERED_ELSEWHERE, FeedbackLevel.CLICKED})
# The strongest event of an item in a search decides its level.
_LEVEL_OF_EVENT = {
    Event.ORDERED: FeedbackLevel.ORDERED,
    Event.CLICKED: FeedbackLevel.CLICKED,
    Event.SHOWN: FeedbackLevel.SHOWN,
}
_EVENT_VOTES = {Event.SHOWN: 1, Event.CLICKED: 2, Event.ORDERED: 3}


def level_weights(levels, weights=DEFAULT_LEVEL_WEIGHTS) -> np.ndarray:
    """Weight of each level (1..6)."""
    levels = np.asarray(levels, dtype=np.int64)
    if levels.size and (levels.min() < 1 or levels.max() > len(FeedbackLevel)):
        raise ValueError(f"feedback levels must lie in 1..{len(FeedbackLevel)}")
    return np.asarray(weights, dtype=np.float64)[levels - 1]


def assign_feedback_levels(
    interactions: pa.Table,
    items: pa.Table,
    *,
    query_categories: Mapping[int, str] | None = None,
    n_same_category: int = 5,
    n_other_category: int = 5,
    weights=DEFAULT_LEVEL_WEIGHTS,
    seed: int = 0,
) -> pa.Table:
    """One row per (search, item) with its level (the best that applies) and weight (FEEDBACK_SCHEMA).

    ``query_categories`` maps query_id -> category name (the synthetic intents); see the module notes
    for what is estimated without it. Items without a category never take levels 2, 5 or 6.
    """
    if n_same_category < 0 or n_other_category < 0:
        raise ValueError("n_same_category and n_other_category must be >= 0")
    category_of = dict(zip(items["item_id"].to_pylist(), items["category"].to_pylist(), strict=True))
    searched = interactions.filter(pc.is_valid(interactions["query_id"]))
    logged = searched.group_by([*_SEARCH_KEYS, "item_id"]).aggregate([("event", "max")])
    logged_level = np.array(
        [_LEVEL_OF_EVENT[Event(e)] for e in logged["event_max"].to_pylist()], dtype=np.int8
    )
    logged = logged.select([*_SEARCH_KEYS, "item_id"]).append_column("level", pa.array(logged_level))
    searches = logged.group_by(_SEARCH_KEYS).aggregate([]).sort_by("session_id")
    if query_categories is None:
        query_categories = _estimate_query_categories(searched, category_of)
    search_category = [query_categories.get(q) for q in searches["query_id"].to_pylist()]
    searches = searches.append_column("category", pa.array(search_category, pa.string()))
    parts = [
        logged,
        _ordered_elsewhere(interactions, searches, category_of),
        _sampled(searches, items, n_same_category, n_other_category, seed),
    ]
    rows = pa.concat_tables([p.cast(_EMPTY_LEVELS.schema) for p in parts])
    # The best (lowest) level per (search, item): sort by level, keep the first of each pair.
    rows = rows.sort_by([("session_id", "ascending"), ("item_id", "ascending"), ("level", "ascending")])
    session, item = rows["session_id"].to_numpy(), rows["item_id"].to_numpy()
    first = np.ones(rows.num_rows, dtype=bool)
    first[1:] = (session[1:] != session[:-1]) | (item[1:] != item[:-1])
    rows = rows.filter(pa.array(first))
    weight = level_weights(rows["level"].to_numpy(), weights)
    return rows.append_column("weight", pa.array(weight)).cast(FEEDBACK_SCHEMA)


def _estimate_query_categories(searched: pa.Table, category_of: Mapping[int, str | None]) -> dict[int, str]:
    votes: dict[int, dict[str, int]] = {}
    columns = (searched[c].to_pylist() for c in ("query_id", "item_id", "event"))
    for query, item, event in zip(*columns, strict=True):
        category = category_of.get(item)
        if category is not None:
            tally = votes.setdefault(query, {})
            tally[category] = tally.get(category, 0) + _EVENT_VOTES[Event(event)]
    # Ties go to the category seen first, so the result does not depend on hash order.
    return {query: max(tally, key=tally.__getitem__) for query, tally in votes.items()}


def _ordered_elsewhere(
    interactions: pa.Table, searches: pa.Table, category_of: Mapping[int, str | None]
) -> pa.Table:
    orders = interactions.filter(pc.equal(interactions["event"], int(Event.ORDERED)))
    ordered_category = [category_of.get(i) for i in orders["item_id"].to_pylist()]
    orders = pa.table(
        {
            "user_id": orders["user_id"],
            "item_id": orders["item_id"],
            "order_session": orders["session_id"],
            "category": pa.array(ordered_category, pa.string()),
        }
    )
    pairs = searches.join(orders, ["user_id", "category"], join_type="inner")
    pairs = pairs.filter(pc.not_equal(pairs["order_session"], pairs["session_id"]))
    level = pa.array(np.full(pairs.num_rows, FeedbackLevel.ORDERED_ELSEWHERE, dtype=np.int8))
    return pairs.select([*_SEARCH_KEYS, "item_id"]).append_column("level", level)


def _sampled(searches: pa.Table, items: pa.Table, n_same: int, n_other: int, seed: int) -> pa.Table:
    """Level-5 and level-6 draws for every search whose category has items; drawn per category at once.

    Draws that hit an item of the search are left to the dedup in the caller (the better level wins).
    """
    rng = np.random.default_rng(seed)
    item_ids = items["item_id"].to_numpy()
    item_category = np.asarray(items["category"].to_pylist(), dtype=object)
    search_category = np.asarray(searches["category"].to_pylist(), dtype=object)
    keys = searches.select(_SEARCH_KEYS)
    parts = []
    for category in sorted(set(item_category.tolist()) - {None}):
        rows = np.flatnonzero(search_category == category)
        if len(rows) == 0:
            continue
        same = item_ids[item_category == category]
        other = item_ids[(item_category != category) & (item_category != None)]  # noqa: E711 (element-wise)
        for pool, n, level in (
            (same, n_same, FeedbackLevel.SAME_CATEGORY_NOT_SHOWN),
            (other, n_other, FeedbackLevel.OTHER_CATEGORY),
        ):
            if len(pool) and n:
                drawn = pool[rng.integers(0, len(pool), size=len(rows) * n)]
                table = keys.take(pa.array(np.repeat(rows, n), pa.int64())).append_column(
                    "item_id", pa.array(drawn)
                )
                parts.append(
                    table.append_column("level", pa.array(np.full(len(drawn), level, dtype=np.int8)))
                )
    return pa.concat_tables(parts) if parts else _EMPTY_LEVELS
