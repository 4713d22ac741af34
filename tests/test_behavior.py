"""Multi-view behaviour: behaviour-built user ID (hand-computed), long view, windows, cold start, index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from onesearch_ray.behavior import (
    BehaviorIndex,
    UserContext,
    behavior_user_sid,
    cold_start_sequence,
    long_term_view,
    recency_weights,
    sliding_windows,
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
def test_recency_weights_hand_computed():
    # i = 1 (oldest), 2, 3 (most recent): exp(sqrt(i)) = 2.718282, 4.113250, 5.652233; sum 12.483765
    assert recency_weights(3) == pytest.approx([0.217745, 0.329488, 0.452767], abs=1e-6)
    assert recency_weights(1) == pytest.approx([1.0])
    assert np.all(np.diff(recency_weights(50)) > 0)  # the most recent item weighs most


def test_behavior_user_sid_hand_computed():
    codes = np.array([[0, 10, 3], [4, 2, 3], [8, 15, 3]])  # oldest first
    # position 0: 0*0.217745 + 4*0.329488 + 8*0.452767 = 4.940085 -> ceil 5
    # position 1: 10*0.217745 + 2*0.329488 + 15*0.452767 = 9.627927 -> ceil 10
    # position 2: 3 * (sum of weights = 1) = 3 -> 3 (no float drift up to 4)
    assert behavior_user_sid(codes, (16, 16, 16)).tolist() == [5, 10, 3]
    # reversing the order moves the weight: 8*0.217745 + 4*0.329488 + 0 = 3.059912 -> 4
    assert behavior_user_sid(codes[::-1], (16, 16, 16)).tolist()[0] == 4


def test_behavior_user_sid_equal_codes_do_not_drift_and_clip():
    same = np.full((7, 2), 5)
    assert behavior_user_sid(same, (8, 8)).tolist() == [5, 5]
    assert behavior_user_sid(np.array([[9, 1]]), (4, 4)).tolist() == [3, 1]  # clipped to the range


def test_behavior_user_sid_empty_and_bad_shape():
    assert behavior_user_sid(np.zeros((0, 3), np.int64), (4, 4, 4)) is None
    with pytest.raises(ValueError, match="item_codes"):
        behavior_user_sid(np.zeros((2, 2)), (4, 4, 4))


# ---- long-term view, windows, cold start ---------------------------------------------------
def test_long_term_view_top_codes_ties_most_recent_first():
    codes = np.array([[1, 0], [2, 0], [1, 3], [3, 3], [2, 5], [4, 6]])  # oldest first
    # level 0 counts: 1->2 (last 2), 2->2 (last 4), 3->1 (last 3), 4->1 (last 5)
    # level 1 counts: 0->2 (last 1), 3->2 (last 3), 5->1, 6->1 (last 5)
    view = long_term_view(codes, (8, 8), per_level=(3, 2))
    assert view == [(0, 2), (0, 1), (0, 4), (1, 3), (1, 0)]
    assert long_term_view(np.zeros((0, 2), np.int64), (8, 8)) == []
    with pytest.raises(ValueError, match="outside"):
        long_term_view(np.array([[9, 0]]), (8, 8))


def test_sliding_windows():
    assert sliding_windows([1, 2, 3], window=5) == [([1], 2), ([1, 2], 3)]
    windows = sliding_windows(list(range(8)), window=3)
    assert windows[0] == ([0], 1) and windows[-1] == ([4, 5, 6], 7) and len(windows) == 7
    assert sliding_windows([1]) == [] and sliding_windows([]) == []


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
