"""The live feedback log: what the server showed (impressions) and what users did with it (clicks, orders).

An embedded SQLite database, not append-only parquet, because the writers are many and small: every
``/search`` writes one impression and every ``/feedback`` one event, from concurrent requests (and
from more than one Serve replica, which are separate processes). SQLite gives each write an ACID
transaction, so concurrent writers serialise on its lock and none is lost, and a committed write
survives a crash or restart (``synchronous=FULL``, write-ahead log). Parquet would need one file per
write or a single writer process. Training reads the log as one arrow table (:func:`read_feedback`).

Events are validated against the impression: an unknown impression, or an item it did not show,
is refused (:class:`UnknownImpressionError`, :class:`ItemNotShownError`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from onesearch_ray.data.schemas import Event

LIVE_FEEDBACK_SCHEMA = pa.schema(
    [
        pa.field("impression_id", pa.string(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),  # seconds, when the search was served
        pa.field("user_id", pa.string()),  # null for an anonymous search
        pa.field("query", pa.string(), nullable=False),
        # the user's recent item ids the search was served with, a JSON list, oldest first ([] for an
        # anonymous search): with the query, what DPO rebuilds the search from
        pa.field("history", pa.string(), nullable=False),
        pa.field("position", pa.int32(), nullable=False),  # 0-based rank shown
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("sid", pa.string(), nullable=False),
        pa.field("event", pa.int8(), nullable=False),  # Event: the strongest recorded for this item
        pa.field("model_dir", pa.string(), nullable=False),
    ]
)
ACTIONS = {"click": Event.CLICKED, "order": Event.ORDERED}
_SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS impressions (
    impression_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    user_id TEXT,
    query TEXT NOT NULL,
    history TEXT NOT NULL,
    model_dir TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS shown (
    impression_id TEXT NOT NULL REFERENCES impressions(impression_id),
    position INTEGER NOT NULL,
    item_id INTEGER NOT NULL,
    sid TEXT NOT NULL,
    PRIMARY KEY (impression_id, item_id)
);
CREATE TABLE IF NOT EXISTS events (
    event_id INTEGER PRIMARY KEY AUTOINCREMENT,
    impression_id TEXT NOT NULL REFERENCES impressions(impression_id),
    item_id INTEGER NOT NULL,
    event INTEGER NOT NULL,
    created REAL NOT NULL
);
"""


class FeedbackError(ValueError):
    """Feedback the log refuses; the message names the problem."""


class UnknownImpressionError(FeedbackError):
    pass


class ItemNotShownError(FeedbackError):
    pass


@dataclass(frozen=True)
class ShownItem:
    item_id: int
    sid: str


class FeedbackLog:
    """One SQLite file; safe to share between threads (one connection each) and processes."""

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.timeout_s = timeout_s
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(_SCHEMA_SQL)
            _migrate(db)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=self.timeout_s, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.execute("PRAGMA foreign_keys=ON")
            except sqlite3.DatabaseError as err:
                raise FeedbackError(
                    f"feedback log {self.path}: not a readable SQLite database ({err})"
                ) from None
            self._local.db = db
        return db

    def record_impression(
        self,
        query: str,
        history: Sequence[int],
        user_id: str | None,
        items: Sequence[ShownItem],
        model_dir: str,
    ) -> str:
        """Store what one search (its query and the user's recent items) showed; returns its new
        impression ID."""
        impression_id = uuid.uuid4().hex
        db = self._connect()
        with _transaction(db):
            db.execute(
                "INSERT INTO impressions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    impression_id,
                    time.time(),
                    user_id,
                    query,
                    json.dumps([int(i) for i in history]),
                    model_dir,
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO shown VALUES (?, ?, ?, ?)",
                [(impression_id, rank, item.item_id, item.sid) for rank, item in enumerate(items)],
            )
        return impression_id

    def record_event(self, impression_id: str, item_id: int, action: str) -> int:
        """A click or an order on an item the impression showed; returns the event's ID."""
        if action not in ACTIONS:
            raise FeedbackError(f"action {action!r}: expected one of {', '.join(ACTIONS)}")
        db = self._connect()
        with _transaction(db):
            if (
                db.execute("SELECT 1 FROM impressions WHERE impression_id = ?", (impression_id,)).fetchone()
                is None
            ):
                raise UnknownImpressionError(f"unknown impression_id {impression_id!r}")
            shown = db.execute(
                "SELECT 1 FROM shown WHERE impression_id = ? AND item_id = ?", (impression_id, item_id)
            ).fetchone()
            if shown is None:
                raise ItemNotShownError(f"item_id {item_id} was not shown in impression {impression_id!r}")
            cursor = db.execute(
                "INSERT INTO events (impression_id, item_id, event, created) VALUES (?, ?, ?, ?)",
                (impression_id, item_id, int(ACTIONS[action]), time.time()),
            )
        return int(cursor.lastrowid)

    def counts(self) -> dict[str, int]:
        db = self._connect()
        impressions = db.execute("SELECT COUNT(*) FROM impressions").fetchone()[0]
        clicks, orders = (
            db.execute("SELECT COUNT(*) FROM events WHERE event = ?", (int(event),)).fetchone()[0]
            for event in (Event.CLICKED, Event.ORDERED)
        )
        return {"impressions": impressions, "clicks": clicks, "orders": orders}

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front, so a read-then-write cannot race."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def read_feedback(path: str | Path) -> pa.Table:
    """The whole log as an arrow table; a missing or unreadable file is an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FeedbackError(
            f"feedback log {path}: no such file (the server writes it; see `onesearch serve`)"
        )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"impressions", "shown", "events"} <= tables:
                raise FeedbackError(
                    f"feedback log {path}: not a OneSearch feedback log (tables {sorted(tables)})"
                )
            return _export(db)
    except sqlite3.DatabaseError as err:
        raise FeedbackError(f"feedback log {path}: not a readable SQLite database ({err})") from None


def _migrate(db: sqlite3.Connection) -> None:
    """A log written before 2026-12-07 keeps each search as JSON {"query", "history"} in a ``prompt``
    column: it becomes ``history``, the list alone, in one transaction (none of it if one fails)."""
    with _transaction(db):  # the check inside the lock: two processes opening an old log migrate it once
        if not _old_layout(db):
            return
        db.execute("ALTER TABLE impressions RENAME COLUMN prompt TO history")
        rows = db.execute("SELECT impression_id, history FROM impressions").fetchall()
        db.executemany(
            "UPDATE impressions SET history = ? WHERE impression_id = ?",
            [(_history_of(stored), impression) for impression, stored in rows],
        )


def _old_layout(db: sqlite3.Connection) -> bool:
    return "prompt" in {row[1] for row in db.execute("PRAGMA table_info(impressions)")}


def _history_of(stored: str) -> str:
    """The history list of an old log's ``prompt`` JSON."""
    value = json.loads(stored)
    return json.dumps(value.get("history", []) if isinstance(value, dict) else value)


def _export(db: sqlite3.Connection) -> pa.Table:
    old = _old_layout(db)  # read as it is (a read-only reader does not migrate it)
    rows = db.execute(
        f"""
        SELECT i.impression_id, CAST(i.created AS INTEGER), i.user_id, i.query,
               i.{"prompt" if old else "history"},
               s.position, s.item_id, s.sid, COALESCE(MAX(e.event), ?), i.model_dir
        FROM impressions i JOIN shown s ON s.impression_id = i.impression_id
        LEFT JOIN events e ON e.impression_id = s.impression_id AND e.item_id = s.item_id
        GROUP BY s.impression_id, s.item_id
        ORDER BY i.created, i.impression_id, s.position
        """,
        (int(Event.SHOWN),),
    ).fetchall()
    if old:
        rows = [(*row[:4], _history_of(row[4]), *row[5:]) for row in rows]
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in LIVE_FEEDBACK_SCHEMA]
    return pa.Table.from_arrays(
        [
            pa.array(list(values), type=field.type)
            for values, field in zip(columns, LIVE_FEEDBACK_SCHEMA, strict=True)
        ],
        schema=LIVE_FEEDBACK_SCHEMA,
    )
