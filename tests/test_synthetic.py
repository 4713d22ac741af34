"""The synthetic track is deterministic, valid, and its ground truth and log are consistent."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np
import pyarrow.compute as pc
import pytest

from onesearch_ray.data import (
    ITEM_SCHEMA,
    DataError,
    Event,
    SyntheticConfig,
    generate_synthetic,
    load_track,
    validate_tables,
    write_synthetic,
)

SMALL = SyntheticConfig(seed=3, n_items=800, n_users=80, n_queries=150, n_sessions=1500)


@pytest.fixture(scope="module")
def track():
    return generate_synthetic(SMALL)


def _attributes(track) -> dict[int, dict[str, str]]:
    return {
        item_id: {**dict(attrs), "category": category}
        for item_id, attrs, category in zip(
            track.items["item_id"].to_pylist(),
            track.items["attributes"].to_pylist(),
            track.items["category"].to_pylist(),
            strict=True,
        )
    }


def test_default_config_sizes():
    default = generate_synthetic()
    assert default.items.num_rows == 3000 and default.users.num_rows == 400
    assert default.queries.num_rows == 600
    assert pc.max(default.interactions["session_id"]).as_py() == 5999
    assert default.name == "synthetic" and default.items.schema.equals(ITEM_SCHEMA)


def test_same_seed_identical_different_seed_different(track):
    again = generate_synthetic(SMALL)
    for name, table in track.tables().items():
        assert table.equals(again.tables()[name]), name
    other = generate_synthetic(replace(SMALL, seed=4))
    assert not other.items.equals(track.items)
    assert not other.interactions.equals(track.interactions)


def test_catalogue_is_stable_when_only_the_log_changes(track):
    fewer_sessions = generate_synthetic(replace(SMALL, n_sessions=100))
    assert fewer_sessions.items.equals(track.items) and fewer_sessions.queries.equals(track.queries)


def test_tables_pass_validation(track):
    validate_tables(track.tables(), "synthetic")


def test_items_look_like_a_catalogue(track):
    titles = track.items["title"].to_pylist()
    assert len(set(titles)) > 0.97 * len(titles)
    attrs = _attributes(track)
    for item_id, title in zip(track.items["item_id"].to_pylist()[:50], titles[:50], strict=True):
        assert attrs[item_id]["brand"] in title  # titles are built from the attributes
        assert attrs[item_id]["entity"].split()[0].lower() in title.lower()
    assert track.items["description"].null_count > 0
    popularity = np.sort(track.items["popularity"].to_numpy())[::-1]
    assert popularity[0] > 20 * popularity[len(popularity) // 2]  # Zipf-like head


def test_ground_truth_matches_query_intent(track):
    attrs, intents = _attributes(track), track.extras["query_intent"]
    has_exact = set()
    for row in track.judgments.to_pylist():
        intent, item = intents[row["query_id"]], attrs[row["item_id"]]
        full = all(item.get(kind) == value for kind, value in intent.items())
        expected = 3.0 if full else 2.0 if item["category"] == intent["category"] else 1.0
        assert row["relevance"] == expected, (intent, item)
        if expected == 3.0:
            has_exact.add(row["query_id"])
    assert has_exact == set(intents)  # every query has at least one exact match judged


def test_query_splits(track):
    values, counts = pc.value_counts(track.queries["split"]).flatten()
    by_split = dict(zip(values.to_pylist(), counts.to_pylist(), strict=True))
    assert by_split == {"train": 120, "valid": 15, "test": 15}
    lowered = [q.lower() for q in track.queries["query"].to_pylist()]
    assert len(set(lowered)) == len(lowered)


def test_log_consistency(track):
    log = track.interactions.to_pylist()
    times = [e["timestamp"] for e in log]
    assert times == sorted(times)
    shown, clicked = defaultdict(set), defaultdict(set)
    session_user, session_query = {}, {}
    for event in log:
        session = event["session_id"]
        assert session_user.setdefault(session, event["user_id"]) == event["user_id"]
        assert session_query.setdefault(session, event["query_id"]) == event["query_id"]
        if event["event"] == Event.SHOWN:
            shown[session].add(event["item_id"])
        elif event["event"] == Event.CLICKED:
            assert event["item_id"] in shown[session]
            clicked[session].add(event["item_id"])
        else:
            assert event["event"] == Event.ORDERED and event["item_id"] in clicked[session]
    assert all(len(items) == SMALL.impressions_per_session for items in shown.values())
    train = set(track.split_queries("train")["query_id"].to_pylist())
    queries = set(session_query.values())
    assert None in queries and (queries - {None}) <= train  # browsing sessions; no valid/test leak


def test_clicks_follow_relevance_and_preferences(track):
    attrs, intents = _attributes(track), track.extras["query_intent"]
    users = {u["user_id"]: u for u in track.users.to_pylist()}
    shows, clicks = np.zeros(4), np.zeros(4)
    pref_shows = pref_clicks = 0
    for event in track.interactions.to_pylist():
        if event["query_id"] is None or event["event"] == Event.ORDERED:
            continue
        item, intent = attrs[event["item_id"]], intents[event["query_id"]]
        rel = (
            3
            if all(item.get(k) == v for k, v in intent.items())
            else 2
            if item["category"] == intent["category"]
            else 1
        )
        is_click = event["event"] == Event.CLICKED
        shows[rel] += not is_click
        clicks[rel] += is_click
        if item["brand"] in users[event["user_id"]]["preferred_brands"]:
            pref_shows += not is_click
            pref_clicks += is_click
    ctr = clicks[1:] / np.maximum(shows[1:], 1)
    assert ctr[2] > ctr[1] > ctr[0]
    assert pref_clicks / pref_shows > clicks.sum() / shows.sum()


def test_sequences_follow_clicks(track):
    clicks = defaultdict(list)
    for event in track.interactions.to_pylist():
        if event["event"] == Event.CLICKED:
            clicks[event["user_id"]].append(event["item_id"])
    rows = defaultdict(list)
    for row in track.sequences.to_pylist():
        rows[row["user_id"]].append(row)
    assert rows and all(len(clicks[u]) >= SMALL.min_user_clicks for u in rows)
    for user, user_rows in rows.items():
        history = clicks[user]
        assert [r["split"] for r in user_rows] == ["valid"] * (len(user_rows) - 1) + ["test"]
        for i, row in enumerate(user_rows, start=1):
            assert row["item_id"] == history[i]
            assert row["history_item_ids"] == history[max(0, i - SMALL.history_length) : i]


def test_write_and_load_round_trip(track, tmp_path):
    directory = write_synthetic(tmp_path / "synthetic", SMALL)
    loaded = load_track(directory)
    assert (loaded.name, loaded.format) == ("synthetic", "onesearch")
    assert loaded.tables().keys() == track.tables().keys()
    for name, table in track.tables().items():
        assert loaded.tables()[name].equals(table), name
    # The intents come back from synthetic_world.json: rewards grade every item, not just the judged.
    assert loaded.extras["query_intent"] == track.extras["query_intent"]
    (directory / "synthetic_world.json").write_text('{"query_intent": 3}')
    with pytest.raises(DataError, match="synthetic_world.json.*query_intent"):
        load_track(directory)
    (directory / "synthetic_world.json").unlink()
    assert "query_intent" not in load_track(directory).extras
    (directory / "track.json").unlink()  # still recognised by its files, sequences included
    bare = load_track(directory)
    assert (bare.name, bare.format) == ("synthetic", "onesearch") and bare.sequences.equals(track.sequences)


def test_items_only_and_edge_configs():
    items_only = generate_synthetic(SyntheticConfig(n_items=20_000, n_queries=0, n_sessions=0, n_users=0))
    assert items_only.items.num_rows == 20_000 and items_only.interactions.num_rows == 0
    assert items_only.queries.num_rows == 0 and items_only.sequences.num_rows == 0
    tiny_config = SyntheticConfig(n_items=5, n_users=3, n_queries=4, n_sessions=20, n_categories=1)
    tiny = generate_synthetic(tiny_config)
    validate_tables(tiny.tables(), "tiny")
    with pytest.raises(ValueError, match="n_categories"):
        SyntheticConfig(n_categories=99)
