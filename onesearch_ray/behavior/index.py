"""BehaviorIndex: per-user time-ordered histories from a Track, answering ``context_for(user, time)``.

Built from ``interactions`` (search/browse log) or from amazon-style ``sequences`` tables. It never
crashes on an unknown user: that user gets an empty, ``known=False`` context (and the query's
cold-start sequence when a query id is given).

Leakage: user histories are cut per call (``before_timestamp``), but the query click counts and
the global popularity behind cold start are fixed at build time: pass ``stats_before`` (e.g. the
start of the evaluation period) so that they only count earlier clicks.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.behavior.views import UserContext, cold_start_sequence
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
    query_sessions: list[int] = field(default_factory=list)
    query_ids: list[int] = field(default_factory=list)


class BehaviorIndex:
    """User -> histories; query -> most-clicked items; global popularity; optional profiles."""

    def __init__(
        self,
        histories: dict[str, UserHistory],
        clicks_by_query: dict[int, list[int]] | None = None,
        popular: list[int] | None = None,
        query_text: dict[int, str] | None = None,
        profiles: dict[str, str] | None = None,
    ) -> None:
        self.histories = histories
        self.clicks_by_query = clicks_by_query or {}
        self.popular = popular or []
        self.query_text = query_text or {}
        self.profiles = profiles or {}

    # ---- constructors ---------------------------------------------------------------------
    @classmethod
    def from_interactions(
        cls,
        interactions: pa.Table,
        queries: pa.Table | None = None,
        users: pa.Table | None = None,
        *,
        stats_before: int | None = None,
        profile_fields: Sequence[str] = ("segment",),
        n_popular: int = 100,
        per_query: int = 50,
    ) -> BehaviorIndex:
        """Index a search log (INTERACTION_SCHEMA columns). Ties in time keep the table's row order."""
        columns = _interaction_columns(interactions)
        order = np.lexsort((np.arange(len(columns["timestamp"])), columns["timestamp"]))
        histories: dict[str, UserHistory] = {}
        seen_queries: set[tuple[str, int, int]] = set()
        for row in order.tolist():
            user = columns["user_id"][row]
            history = histories.setdefault(user, UserHistory())
            _add_event(history, columns, row, seen_queries)
        stats = _stats_rows(columns, stats_before)
        return cls(
            histories,
            clicks_by_query=_clicks_by_query(columns, stats, per_query),
            popular=_popular(columns["item_id"][stats & (columns["event"] == int(Event.CLICKED))], n_popular),
            query_text=_query_text(queries),
            profiles=_profiles(users, profile_fields),
        )

    @classmethod
    def from_track(
        cls,
        track: Any,
        *,
        stats_before: int | None = None,
        split: str | Collection[str] = "valid",
        profile_fields: Sequence[str] = ("segment",),
    ) -> BehaviorIndex:
        """From a Track: its interactions (preferred) or, lacking them, its ``split`` sequences."""
        if track.interactions is not None:
            return cls.from_interactions(
                track.interactions,
                track.queries,
                track.users,
                stats_before=stats_before,
                profile_fields=profile_fields,
            )
        if track.sequences is not None:
            return cls.from_sequences(track.sequences, split)
        raise ValueError(f"track {track.name!r} has neither interactions nor sequences")

    @classmethod
    def from_sequences(
        cls, sequences: pa.Table, split: str | Collection[str] = "valid", *, n_popular: int = 100
    ) -> BehaviorIndex:
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
        counts = np.asarray([i for items in chains.values() for i in items], np.int64)
        return cls(histories, popular=_popular(counts, n_popular))

    # ---- queries --------------------------------------------------------------------------
    def __contains__(self, user_id: object) -> bool:
        return user_id in self.histories

    def user_ids(self) -> list[str]:
        """Known users, most active first (ties by id), e.g. for a demo's user picker."""
        return sorted(self.histories, key=lambda u: (-len(self.histories[u].click_items), u))

    def __len__(self) -> int:
        return len(self.histories)

    def cold_start_items(self, query_id: int | None, length: int = 5) -> list[int]:
        """The query's default sequence (oldest first, most-clicked last); popular items as fallback."""
        return cold_start_sequence(query_id, self.clicks_by_query, self.popular, length)

    def cold_start_context(self, query_id: int | None, length: int = 5) -> UserContext:
        """A context for an unknown user: only the query's default sequence (short and long view)."""
        items = self.cold_start_items(query_id, length)
        return UserContext(
            None, short_items=items, long_items=list(items), known=False, cold_start=bool(items)
        )

    def context_for(
        self,
        user_id: str | None,
        before_timestamp: int | None = None,
        short_len: int = 5,
        long_len: int = 100,
        recent_queries: int = 3,
        *,
        query_id: int | None = None,
        exclude_session: int | None = None,
    ) -> UserContext:
        """The user's context from events strictly before ``before_timestamp`` (None: all events).

        ``exclude_session`` drops that session's query from the recent queries (the current query is
        given to the prompt separately). When the short history is empty and ``query_id`` is given,
        it is replaced by the query's cold-start sequence (``cold_start=True``). An unknown user gets
        an empty context with ``known=False``.
        """
        history = self.histories.get(user_id) if user_id is not None else None
        profile = self.profiles.get(user_id) if user_id is not None else None
        if history is None:
            context = UserContext(user_id, profile=profile, known=False)
        else:
            context = UserContext(
                user_id,
                recent_queries=self._recent_queries(
                    history, before_timestamp, recent_queries, exclude_session
                ),
                short_items=_before(history.click_times, history.click_items, before_timestamp, short_len),
                long_items=_before(history.long_times, history.long_items, before_timestamp, long_len),
                profile=profile,
            )
        if not context.short_items and query_id is not None:
            context.short_items = self.cold_start_items(query_id, short_len)
            context.cold_start = bool(context.short_items)
        return context

    def _recent_queries(
        self, history: UserHistory, before: int | None, limit: int, exclude_session: int | None
    ) -> list[str]:
        end = len(history.query_times) if before is None else bisect.bisect_left(history.query_times, before)
        chosen: list[int] = []
        for index in range(end - 1, -1, -1):
            if len(chosen) == limit:
                break
            query_id = history.query_ids[index]
            if history.query_sessions[index] == exclude_session or query_id in chosen:
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
        history.query_sessions.append(session)
        history.query_ids.append(query_id)


def _before(times: list[int], items: list[int], before: int | None, limit: int) -> list[int]:
    end = len(times) if before is None else bisect.bisect_left(times, before)
    return list(items[max(0, end - limit) : end]) if limit > 0 else []


def _stats_rows(columns: dict[str, Any], stats_before: int | None) -> np.ndarray:
    if stats_before is None:
        return np.ones(len(columns["timestamp"]), bool)
    return columns["timestamp"] < stats_before


def _clicks_by_query(columns: dict[str, Any], rows: np.ndarray, per_query: int) -> dict[int, list[int]]:
    mask = rows & (columns["event"] == int(Event.CLICKED)) & (columns["query_id"] >= 0)
    counts: dict[int, Counter] = {}
    pairs = zip(columns["query_id"][mask].tolist(), columns["item_id"][mask].tolist(), strict=True)
    for query_id, item in pairs:
        counts.setdefault(query_id, Counter())[item] += 1
    return {q: _most_common(c, per_query) for q, c in counts.items()}


def _popular(items: np.ndarray, limit: int) -> list[int]:
    return _most_common(Counter(np.asarray(items, np.int64).tolist()), limit)


def _most_common(counts: Counter, limit: int) -> list[int]:
    """Keys by descending count, ties by ascending key (deterministic)."""
    return [key for key, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def _query_text(queries: pa.Table | None) -> dict[int, str]:
    if queries is None:
        return {}
    return dict(zip(queries["query_id"].to_pylist(), queries["query"].to_pylist(), strict=True))


def _profiles(users: pa.Table | None, fields: Sequence[str]) -> dict[str, str]:
    """'segment: x; preferred_brands: a, b' per user from the chosen USER_SCHEMA columns."""
    if users is None or not fields:
        return {}
    present = [f for f in fields if f in users.column_names]
    values = {f: users[f].to_pylist() for f in present}
    profiles = {}
    for row, user in enumerate(users["user_id"].to_pylist()):
        parts = []
        for name in present:
            value = values[name][row]
            if isinstance(value, list):
                value = ", ".join(str(v) for v in value)
            if value:
                parts.append(f"{name}: {value}")
        if parts:
            profiles[user] = "; ".join(parts)
    return profiles


def _chain(sequence: list[int], window: list[int]) -> list[int]:
    """Append ``window`` to ``sequence`` after their longest overlap (sequence tail == window head)."""
    for overlap in range(min(len(sequence), len(window)), 0, -1):
        if sequence[-overlap:] == window[:overlap]:
            return sequence + window[overlap:]
    return sequence + window
