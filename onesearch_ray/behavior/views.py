"""Multi-view user behaviour (paper section 2) as pure functions over item codes and item lists.

Index convention everywhere: sequences are OLDEST FIRST, so the most recent item is the last one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# ceil() of a weighted mean of equal integers can land a hair above the integer (3.0000000000000004);
# values within this tolerance of an integer are treated as that integer.
_CEIL_TOLERANCE = 1e-9


@dataclass
class UserContext:
    """What the prompt builder knows about a user at one moment (all lists oldest first)."""

    user_id: str | None
    recent_queries: list[str] = field(default_factory=list)
    short_items: list[int] = field(default_factory=list)
    long_items: list[int] = field(default_factory=list)
    profile: str | None = None
    known: bool = True  # False: the user has no history in the index (cold-start user)
    cold_start: bool = False  # True: short_items is the query's default sequence, not the user's own

    @classmethod
    def from_history(
        cls, user_id: str | None, items: Sequence[int], short_len: int = 5, long_len: int = 100
    ) -> UserContext:
        """A context from one item history (oldest first), e.g. a sequences row's ``history_item_ids``."""
        items = [int(i) for i in items]
        short = items[-short_len:] if short_len > 0 else []
        long = items[-long_len:] if long_len > 0 else []
        return cls(user_id, short_items=short, long_items=long, known=bool(items))

    @property
    def has_history(self) -> bool:
        return bool(self.short_items or self.long_items)


def recency_weights(n: int) -> np.ndarray:
    """``softmax(sqrt(i))`` for i = 1..n, item 1 the OLDEST: the most recent item weighs most."""
    root = np.sqrt(np.arange(1, n + 1, dtype=np.float64))
    scaled = np.exp(root - root.max())
    return scaled / scaled.sum()


def behavior_user_sid(item_codes: np.ndarray, level_sizes: Sequence[int]) -> np.ndarray | None:
    """The behaviour-built ID: ``ceil(sum_i w_i * SID(s_i))`` per code position, ``w = recency_weights``.

    ``item_codes`` is (n, P), oldest first. Each position is clipped to ``[0, level_sizes[p])``.
    Returns None for an empty sequence (the caller then uses a cold-start sequence).
    """
    codes = np.asarray(item_codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
        raise ValueError(f"item_codes must be (n, {len(level_sizes)}), got shape {codes.shape}")
    if len(codes) == 0:
        return None
    mixed = recency_weights(len(codes)) @ codes
    ids = np.ceil(mixed - _CEIL_TOLERANCE)
    return np.clip(ids, 0, np.asarray(level_sizes) - 1).astype(np.int64)


def long_term_view(
    item_codes: np.ndarray, level_sizes: Sequence[int], per_level: Sequence[int] = (4, 4)
) -> list[tuple[int, int]]:
    """Discrete compressed long-term view: the ``per_level[l]`` most frequent codes at level ``l``.

    ``item_codes`` is (n, P), oldest first. Ties in frequency go to the code seen most recently.
    Returns (position, code) pairs, level by level, most frequent first; an empty sequence gives [].
    """
    codes = np.asarray(item_codes)
    if codes.ndim != 2 or codes.shape[1] != len(level_sizes):
        raise ValueError(f"item_codes must be (n, {len(level_sizes)}), got shape {codes.shape}")
    if len(per_level) > len(level_sizes):
        raise ValueError(f"per_level has {len(per_level)} levels but a SID only {len(level_sizes)}")
    view: list[tuple[int, int]] = []
    for level, keep in enumerate(per_level):
        column = codes[:, level].astype(np.int64)
        if len(column) and (column.min() < 0 or column.max() >= level_sizes[level]):
            raise ValueError(f"level {level}: codes outside [0, {level_sizes[level]})")
        counts: dict[int, int] = {}
        last_seen: dict[int, int] = {}
        for index, code in enumerate(column.tolist()):
            counts[code] = counts.get(code, 0) + 1
            last_seen[code] = index
        ranked = sorted(counts, key=lambda c: (-counts[c], -last_seen[c]))
        view.extend((level, code) for code in ranked[:keep])
    return view


def sliding_windows(items: Sequence[int], window: int = 5) -> list[tuple[list[int], int]]:
    """Augmentation: for every position i >= 1, (the at most ``window`` items before i, item i)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    items = list(items)
    return [(items[max(0, i - window) : i], items[i]) for i in range(1, len(items))]


def cold_start_sequence(
    query_key: Hashable | None,
    clicks_by_query: Mapping[Hashable, Sequence[int]],
    popular: Sequence[int],
    length: int = 5,
) -> list[int]:
    """Default behaviour for a user without history: the items most clicked for the query.

    ``clicks_by_query[key]`` is most-clicked first; missing slots are filled from the globally
    ``popular`` items (most popular first), without repeats. The result is returned AS A BEHAVIOUR
    SEQUENCE, oldest first: the most-clicked item comes LAST, where it weighs most.
    """
    chosen: list[int] = []
    for item in [*clicks_by_query.get(query_key, ()), *popular]:
        if len(chosen) == length:
            break
        if item not in chosen:
            chosen.append(int(item))
    return chosen[::-1]
