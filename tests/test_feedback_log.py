"""The live feedback log: validation, concurrent writers (threads and processes), durability, export."""

from __future__ import annotations

import concurrent.futures
import multiprocessing

import pytest

from onesearch_ray.data.schemas import Event
from onesearch_ray.rewards.feedback_log import (
    _SCHEMA_SQL,
    LIVE_FEEDBACK_SCHEMA,
    FeedbackError,
    FeedbackLog,
    ItemNotShownError,
    ShownItem,
    UnknownImpressionError,
    read_feedback,
)

SHOWN = [ShownItem(item_id, f"<a_{item_id}>") for item_id in (7, 3, 9)]


def _search_and_click(path: str, n: int) -> int:
    log = FeedbackLog(path)
    for _ in range(n):
        impression = log.record_impression("drill", [5, 6], "u1", SHOWN, "model/x")
        log.record_event(impression, 3, "click")
        log.record_event(impression, 3, "order")
    log.close()
    return n


def test_export_has_one_row_per_shown_item_with_the_strongest_event(tmp_path):
    log = FeedbackLog(tmp_path / "feedback.sqlite")
    impression = log.record_impression("drill", [], None, SHOWN, "model/personalization")
    log.record_event(impression, 3, "click")
    log.record_event(impression, 3, "order")
    log.record_event(impression, 9, "click")
    table = read_feedback(tmp_path / "feedback.sqlite")
    assert table.schema == LIVE_FEEDBACK_SCHEMA
    rows = table.to_pylist()
    assert [(r["position"], r["item_id"], r["event"]) for r in rows] == [
        (0, 7, Event.SHOWN),
        (1, 3, Event.ORDERED),
        (2, 9, Event.CLICKED),
    ]
    assert {r["impression_id"] for r in rows} == {impression} and rows[0]["user_id"] is None
    assert log.counts() == {"impressions": 1, "clicks": 2, "orders": 1}


def test_bad_feedback_is_refused_and_changes_nothing(tmp_path):
    log = FeedbackLog(tmp_path / "feedback.sqlite")
    impression = log.record_impression("drill", [], "u1", SHOWN, "m")
    with pytest.raises(UnknownImpressionError, match="nope"):
        log.record_event("nope", 3, "click")
    with pytest.raises(ItemNotShownError, match="item_id 4"):
        log.record_event(impression, 4, "click")
    with pytest.raises(FeedbackError, match="action 'like'"):
        log.record_event(impression, 3, "like")
    assert log.counts() == {"impressions": 1, "clicks": 0, "orders": 0}


def test_concurrent_threads_and_processes_lose_nothing_and_survive_reopening(tmp_path):
    path = str(tmp_path / "feedback.sqlite")
    FeedbackLog(path).close()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        assert sum(pool.map(lambda _: _search_and_click(path, 10), range(8))) == 80
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        assert sum(pool.starmap(_search_and_click, [(path, 10)] * 3)) == 30
    reopened = FeedbackLog(path)  # a restart: a new connection reads every committed write
    assert reopened.counts() == {"impressions": 110, "clicks": 110, "orders": 110}
    assert read_feedback(path).num_rows == 110 * len(SHOWN)


def test_missing_or_corrupt_log_names_the_file(tmp_path):
    with pytest.raises(FeedbackError, match="no such file"):
        read_feedback(tmp_path / "missing.sqlite")
    corrupt = tmp_path / "corrupt.sqlite"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(FeedbackError, match="corrupt.sqlite"):
        read_feedback(corrupt)


def test_a_log_written_before_the_history_column_is_read_and_migrated(tmp_path):
    """Logs of 2026-12-06 and before kept each search as JSON {"query", "history"} in `prompt`."""
    import json
    import sqlite3

    path = tmp_path / "old.sqlite"
    old_schema = _SCHEMA_SQL.replace("history TEXT NOT NULL", "prompt TEXT NOT NULL")
    with sqlite3.connect(path) as db:
        db.executescript(old_schema)
        db.execute(
            "INSERT INTO impressions VALUES ('i1', 1.0, 'u1', 'drill', ?, 'generator')",
            (json.dumps({"query": "drill", "history": [4, 2]}),),
        )
        db.execute("INSERT INTO shown VALUES ('i1', 0, 7, '<a_7>')")
    db.close()
    assert read_feedback(path).column("history").to_pylist() == ["[4, 2]"]  # read-only: read as it is
    log = FeedbackLog(path)  # a writer migrates it, once
    FeedbackLog(path).close()
    log.record_impression("saw", [9], None, SHOWN, "generator")
    table = read_feedback(path)
    assert table.column("history").to_pylist() == ["[4, 2]"] + ["[9]"] * len(SHOWN)
    with sqlite3.connect(path) as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(impressions)")}
    assert "history" in columns and "prompt" not in columns
