"""Multi-view user behaviour (paper section 2) as pure functions over item codes and item lists.

Index convention everywhere: sequences are OLDEST FIRST, so the most recent item is the last one.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

# The short-term view's width: a next-item search's dense query is the mean of these last items, and
# the personalisation baselines (co-occurrence, dense history) read the same number.
RECENT_ITEMS = 3


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
