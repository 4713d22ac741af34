"""BehaviorIndex: per-user time-ordered histories from a Track, answering ``context_for(user, time)``.

Built from ``interactions`` (search/browse log) or from amazon-style ``sequences`` tables. It never
crashes on an unknown user: that user gets an empty context. Histories are cut per call
(``before_timestamp``), so a replay never sees the future.
"""

from __future__ import annotations

import bisect
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.behavior.views import UserContext
from onesearch_ray.data.schemas import SPLITS, Event

LONG_EVENTS = (int(Event.CLICKED), int(Event.ORDERED))


@dataclass
class UserHistory:
    """One user's behaviour, each list in time order (oldest first), with its timestamps."""

    click_times: list[int] = field(default_factory=list)
    click_items: list[int] = field(default_factory=list)
    long_times: list[int] = field(default_factory=list)  # clicks AND orders (an ordered item counts twice)
    long_items: list[int] = field(default_factory=list)
    query_times: list[int] = field(default_factory=list)  # first event time of each (session, query)
    query_ids: list[int] = field(default_factory=list)


class BehaviorIndex:
    """User -> time-ordered histories (clicks, clicks and orders, searched queries)."""

    def __init__(self, histories: dict[str, UserHistory], query_text: dict[int, str] | None = None) -> None:
        self.histories = histories
        self.query_text = query_text or {}

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_interactions(cls, interactions: pa.Table, queries: pa.Table | None = None) -> BehaviorIndex:
        """Index a search log (INTERACTION_SCHEMA columns). Ties in time keep the table's row order."""
        columns = _interaction_columns(interactions)
        order = np.lexsort((np.arange(len(columns["timestamp"])), columns["timestamp"]))
        histories: dict[str, UserHistory] = {}
        seen_queries: set[tuple[str, int, int]] = set()
        for row in order.tolist():
            user = columns["user_id"][row]
            history = histories.setdefault(user, UserHistory())
            _add_event(history, columns, row, seen_queries)
        return cls(histories, _query_text(queries))

    @classmethod
    def from_track(cls, track: Any, split: str | Collection[str] = "valid") -> BehaviorIndex:
        """From a Track: its interactions (preferred) or, lacking them, its ``split`` sequences."""
        if track.interactions is not None:
            return cls.from_interactions(track.interactions, track.queries)
        if track.sequences is not None:
            return cls.from_sequences(track.sequences, split)
        raise ValueError(f"track {track.name!r} has neither interactions nor sequences")

    @classmethod
    def from_sequences(cls, sequences: pa.Table, split: str | Collection[str] = "valid") -> BehaviorIndex:
        """From next-item rows (history_item_ids oldest first, item_id next), rows of ``split`` only.

        A user's rows are chained into one sequence (each row's history overlaps the sequence so
        far; its item is appended). There are no timestamps: an item's index in the user's sequence
        stands in for time, so ``context_for(before_timestamp=k)`` sees the first k items.
        """
        wanted = {split} if isinstance(split, str) else set(split)
        if not wanted <= SPLITS:
            raise ValueError(f"unknown split(s) {sorted(wanted - SPLITS)}; expected {sorted(SPLITS)}")
        rows = sequences.filter(pc.is_in(sequences["split"], value_set=pa.array(sorted(wanted))))
        chains: dict[str, list[int]] = {}
        for user, history, item in zip(
            rows["user_id"].to_pylist(),
            rows["history_item_ids"].to_pylist(),
            rows["item_id"].to_pylist(),
            strict=True,
        ):
            chains[user] = _chain(chains.get(user, []), [*history, item])
        histories = {}
        for user, items in chains.items():
            times = list(range(len(items)))
            histories[user] = UserHistory(times, list(items), list(times), list(items))
        return cls(histories)

    # ---- queries --------------------------------------------------------------------------
    def __contains__(self, user_id: object) -> bool:
        return user_id in self.histories

    def user_ids(self) -> list[str]:
        """Known users, most active first (ties by id), e.g. for a demo's user picker."""
        return sorted(self.histories, key=lambda u: (-len(self.histories[u].click_items), u))

    def __len__(self) -> int:
        return len(self.histories)

    def context_for(
        self,
        user_id: str | None,
        before_timestamp: int | None = None,
        short_len: int = 5,
        long_len: int = 100,
        recent_queries: int = 3,
    ) -> UserContext:
        """The user's context from events strictly before ``before_timestamp`` (None: all events); an
        unknown user gets an empty one."""
        history = self.histories.get(user_id) if user_id is not None else None
        if history is None:
            return UserContext(user_id)
        return UserContext(
            user_id,
            recent_queries=self._recent_queries(history, before_timestamp, recent_queries),
            short_items=_before(history.click_times, history.click_items, before_timestamp, short_len),
            long_items=_before(history.long_times, history.long_items, before_timestamp, long_len),
        )

    def _recent_queries(self, history: UserHistory, before: int | None, limit: int) -> list[str]:
        end = len(history.query_times) if before is None else bisect.bisect_left(history.query_times, before)
        chosen: list[int] = []
        for index in range(end - 1, -1, -1):
            if len(chosen) == limit:
                break
            query_id = history.query_ids[index]
            if query_id in chosen:
                continue
            if query_id in self.query_text:
                chosen.append(query_id)
        return [self.query_text[q] for q in reversed(chosen)]


# ---- helpers ---------------------------------------------------------------------------------
def _interaction_columns(table: pa.Table) -> dict[str, Any]:
    missing = {"user_id", "item_id", "event", "timestamp"} - set(table.column_names)
    if missing:
        raise ValueError(f"interactions lack column(s) {sorted(missing)}")
    n = table.num_rows

    def ints(name: str, default: int) -> np.ndarray:
        if name not in table.column_names:
            return np.full(n, default, np.int64)
        return pc.fill_null(table[name], default).to_numpy().astype(np.int64)

    return {
        "user_id": table["user_id"].to_pylist(),
        "item_id": ints("item_id", -1),
        "event": ints("event", -1),
        "timestamp": ints("timestamp", 0),
        "session_id": ints("session_id", -1),
        "query_id": ints("query_id", -1),  # -1: not a search event
    }


def _add_event(history: UserHistory, columns: dict[str, Any], row: int, seen: set) -> None:
    time, item = int(columns["timestamp"][row]), int(columns["item_id"][row])
    event = int(columns["event"][row])
    if event == int(Event.CLICKED):
        history.click_times.append(time)
        history.click_items.append(item)
    if event in LONG_EVENTS:
        history.long_times.append(time)
        history.long_items.append(item)
    query_id, session = int(columns["query_id"][row]), int(columns["session_id"][row])
    key = (columns["user_id"][row], session, query_id)
    if query_id >= 0 and key not in seen:
        seen.add(key)
        history.query_times.append(time)
        history.query_ids.append(query_id)


def _before(times: list[int], items: list[int], before: int | None, limit: int) -> list[int]:
    end = len(times) if before is None else bisect.bisect_left(times, before)
    return list(items[max(0, end - limit) : end]) if limit > 0 else []


def _query_text(queries: pa.Table | None) -> dict[int, str]:
    if queries is None:
        return {}
    return dict(zip(queries["query_id"].to_pylist(), queries["query"].to_pylist(), strict=True))


def _chain(sequence: list[int], window: list[int]) -> list[int]:
    """Append ``window`` to ``sequence`` after their longest overlap (sequence tail == window head)."""
    for overlap in range(min(len(sequence), len(window)), 0, -1):
        if sequence[-overlap:] == window[:overlap]:
            return sequence + window[overlap:]
    return sequence + window
