"""Multi-view user behaviour (paper section 2) as pure functions over item codes and item lists.

Index convention everywhere: sequences are OLDEST FIRST, so the most recent item is the last one.
"""

from __future__ import annotations

from collections.abc import Sequence
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

    @classmethod
    def from_history(
        cls, user_id: str | None, items: Sequence[int], short_len: int = 5, long_len: int = 100
    ) -> UserContext:
        """A context from one item history (oldest first), e.g. a sequences row's ``history_item_ids``."""
        items = [int(i) for i in items]
        short = items[-short_len:] if short_len > 0 else []
        long = items[-long_len:] if long_len > 0 else []
        return cls(user_id, short_items=short, long_items=long)
