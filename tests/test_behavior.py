"""Multi-view behaviour: behaviour-built user ID (hand-computed), long view, windows, cold start, index."""

from __future__ import annotations

import pyarrow as pa
import pytest

from onesearch_ray.behavior import (
    BehaviorIndex,
    UserContext,
    cold_start_sequence,
)
from onesearch_ray.data import (
    INTERACTION_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    USER_SCHEMA,
    Event,
    SyntheticConfig,
    generate_synthetic,
)

SHOWN, CLICKED, ORDERED = int(Event.SHOWN), int(Event.CLICKED), int(Event.ORDERED)


# ---- behaviour-built user ID ---------------------------------------------------------------
def test_cold_start_sequence_query_clicks_then_popular():
    clicks = {7: [40, 41]}
    popular = [41, 1, 2, 3, 4]
    # most-clicked 40, 41, then popular (41 skipped); returned oldest first: most-clicked LAST
    assert cold_start_sequence(7, clicks, popular, length=4) == [2, 1, 41, 40]
    assert cold_start_sequence(99, clicks, popular, length=2) == [1, 41]
    assert cold_start_sequence(None, {}, [], length=5) == []


# ---- BehaviorIndex -------------------------------------------------------------------------
def _log() -> pa.Table:
    rows = [  # user, query, item, event, time, session
        ("u1", 1, 10, SHOWN, 100, 1),
        ("u1", 1, 10, CLICKED, 110, 1),
        ("u1", 1, 10, ORDERED, 120, 1),
        ("u1", None, 11, CLICKED, 200, 2),  # browsing, no query
        ("u1", 2, 12, SHOWN, 300, 3),
        ("u1", 2, 12, CLICKED, 310, 3),
        ("u1", 1, 13, CLICKED, 410, 4),
        ("u2", 1, 10, CLICKED, 150, 5),
        ("u2", 3, 14, CLICKED, 500, 6),
    ]
    columns = list(zip(*rows, strict=True))
    names = ["user_id", "query_id", "item_id", "event", "timestamp", "session_id"]
    return pa.Table.from_pydict(dict(zip(names, columns, strict=True)), schema=INTERACTION_SCHEMA)


def _queries() -> pa.Table:
    return pa.Table.from_pydict(
        {"query_id": [1, 2, 3], "query": ["red drill", "brass lamp", "oak sofa"], "split": ["train"] * 3},
        schema=QUERY_SCHEMA,
    )


def _users() -> pa.Table:
    return pa.Table.from_pydict(
        {"user_id": ["u1", "u2"], "segment": ["pro", None], "preferred_categories": [["tools"], []],
         "preferred_brands": [[], []], "preferred_colours": [None, None]},
        schema=USER_SCHEMA,
    )  # fmt: skip


def test_index_context_cuts_at_timestamp():
    index = BehaviorIndex.from_interactions(_log(), _queries(), _users())
    full = index.context_for("u1")
    assert full.known and not full.cold_start
    assert full.short_items == [10, 11, 12, 13]  # clicks, oldest first
    assert full.long_items == [10, 10, 11, 12, 13]  # clicks and orders
    assert full.recent_queries == ["brass lamp", "red drill"]  # deduplicated, most recent last
    assert full.profile == "segment: pro"
    early = index.context_for("u1", before_timestamp=310, short_len=2)
    assert early.short_items == [10, 11] and early.long_items == [10, 10, 11]
    assert early.recent_queries == ["red drill", "brass lamp"]
    # the current session's query is given separately: exclude it from the recent queries
    assert index.context_for("u1", before_timestamp=310, exclude_session=3).recent_queries == ["red drill"]
    assert index.context_for("u1", before_timestamp=100).short_items == []


def test_index_unknown_user_and_cold_start():
    index = BehaviorIndex.from_interactions(_log(), _queries())
    unknown = index.context_for("nobody", before_timestamp=1000)
    assert unknown == UserContext("nobody", known=False)
    assert index.context_for(None).known is False
    # clicks for query 1: item 10 twice, 13 once; popularity: 10 (2), then 11, 12, 13, 14 (1 each)
    assert index.clicks_by_query[1] == [10, 13]
    cold = index.context_for("nobody", query_id=1, short_len=3)
    assert cold.cold_start and cold.short_items == [11, 13, 10]
    assert index.context_for("nobody", query_id=999, short_len=2).short_items == [11, 10]
    default = index.cold_start_context(1, length=2)
    assert (default.user_id, default.known, default.cold_start) == (None, False, True)
    assert default.short_items == default.long_items == [13, 10]
    # a known user without clicks before the time also gets the query's default sequence
    assert index.context_for("u1", before_timestamp=105, query_id=1, short_len=1).short_items == [10]


def test_index_stats_before_ignores_later_clicks():
    index = BehaviorIndex.from_interactions(_log(), _queries(), stats_before=300)
    assert index.clicks_by_query == {1: [10]}
    assert index.popular == [10, 11]


def test_index_from_synthetic_track_matches_log():
    track = generate_synthetic(SyntheticConfig(seed=1, n_items=120, n_users=10, n_queries=30, n_sessions=80))
    index = BehaviorIndex.from_track(track)
    log = track.interactions.to_pylist()
    user = log[0]["user_id"]
    clicks = [r["item_id"] for r in sorted(log, key=lambda r: r["timestamp"])
              if r["user_id"] == user and r["event"] == CLICKED]  # fmt: skip
    context = index.context_for(user, short_len=5, long_len=1000)
    assert context.short_items == clicks[-5:]
    assert [i for i in context.long_items if i in clicks] == context.long_items
    assert len(index) == len({r["user_id"] for r in log})


def test_index_from_sequences_chains_rows_of_one_split():
    sequences = pa.Table.from_pydict(
        {
            "user_id": ["a", "a", "a", "b", "b"],
            "history_item_ids": [[1, 2], [1, 2, 3], [2, 3, 4], [7], [7, 8]],
            "item_id": [3, 4, 5, 8, 9],
            "split": ["valid", "valid", "test", "valid", "test"],
        },
        schema=SEQUENCE_SCHEMA,
    )
    index = BehaviorIndex.from_sequences(sequences)  # split="valid"
    assert index.context_for("a", short_len=10).short_items == [1, 2, 3, 4]
    assert index.context_for("b").short_items == [7, 8]
    assert index.context_for("a", before_timestamp=2).short_items == [1, 2]  # position stands in for time
    assert index.context_for("a").recent_queries == []
    both = BehaviorIndex.from_sequences(sequences, split=("valid", "test"))
    assert both.context_for("a", short_len=10).short_items == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="split"):
        BehaviorIndex.from_sequences(sequences, split="nope")


def test_context_from_a_single_history():
    context = UserContext.from_history("a", [1, 2, 3, 4, 5, 6], short_len=2, long_len=4)
    assert (context.short_items, context.long_items, context.known) == ([5, 6], [3, 4, 5, 6], True)
    assert UserContext.from_history("b", []).known is False
