"""Multi-view behaviour: each user's history at a moment (the index), from a log and from sequences."""

from __future__ import annotations

import pyarrow as pa
import pytest

from onesearch_ray.behavior import BehaviorIndex, UserContext
from onesearch_ray.data import (
    INTERACTION_SCHEMA,
    QUERY_SCHEMA,
    SEQUENCE_SCHEMA,
    Event,
    SyntheticConfig,
    generate_synthetic,
)

SHOWN, CLICKED, ORDERED = int(Event.SHOWN), int(Event.CLICKED), int(Event.ORDERED)


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


def test_index_context_cuts_at_timestamp():
    index = BehaviorIndex.from_interactions(_log(), _queries())
    full = index.context_for("u1")
    assert full.short_items == [10, 11, 12, 13]  # clicks, oldest first
    assert full.long_items == [10, 10, 11, 12, 13]  # clicks and orders
    assert full.recent_queries == ["brass lamp", "red drill"]  # deduplicated, most recent last
    early = index.context_for("u1", before_timestamp=310, short_len=2)
    assert early.short_items == [10, 11] and early.long_items == [10, 10, 11]
    assert early.recent_queries == ["red drill", "brass lamp"]
    assert index.context_for("u1", before_timestamp=100).short_items == []


def test_index_unknown_user_gets_an_empty_context():
    index = BehaviorIndex.from_interactions(_log(), _queries())
    assert index.context_for("nobody", before_timestamp=1000) == UserContext("nobody")
    assert index.context_for(None) == UserContext(None)
    assert "u1" in index and "nobody" not in index and index.user_ids() == ["u1", "u2"]


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
    assert (context.short_items, context.long_items) == ([5, 6], [3, 4, 5, 6])
    assert UserContext.from_history("b", []) == UserContext("b")
