"""Relevance of a (query, item) pair on the tracks' 1..3 scale, and the 0-3 tier of OneSearch-V2.

Sources, first that knows the pair wins:

1. graded judgments (Home Depot: means of 1..3 ratings; synthetic: 3 / 2 / 1 for a sample of items);
2. the synthetic world's known intent (``track.extras["query_intent"]``, kept on disk in
   ``synthetic_world.json`` beside the tables): 3 when the item satisfies the whole intent
   (category, entity and every attribute constraint), 2 when it is in the query's category only, 1
   otherwise -- the generator's own rule, so every item of the catalogue has a known grade, not just
   the ~35 judged per query;
3. ``unjudged`` (default 1.0, "irrelevant"), as evaluation treats unjudged items (NDCG gain 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from onesearch_ray.data import Track

GRADE_RANGE = (1.0, 3.0)


def relevance_tier(grades) -> np.ndarray:
    """The V2 tier 0-3 of grades on the 1..3 scale: linear, rounded half up.

    1 -> 0 (irrelevant), 4/3 and 5/3 -> 1 (mismatch), 2 and 7/3 -> 2 (related), 8/3 and 3 -> 3
    (excellent). The 1e-9 keeps thirds stored a hair below k/3 from rounding down.
    """
    grades = np.asarray(grades, dtype=np.float64)
    lo, hi = GRADE_RANGE
    if np.any((grades < lo) | (grades > hi)) or not np.all(np.isfinite(grades)):
        raise ValueError(f"relevance_tier: grades must lie in [{lo}, {hi}]")
    return np.floor(1.5 * (grades - lo) + 0.5 + 1e-9).astype(np.int64)


class RelevanceOracle:
    """Graded relevance of (query, item) pairs from judgments, then intents, then a default."""

    def __init__(
        self,
        judgments: pa.Table | None = None,
        *,
        items: pa.Table | None = None,
        intents: Mapping[int, Mapping[str, str]] | None = None,
        unjudged: float = 1.0,
    ) -> None:
        lo, hi = GRADE_RANGE
        if not lo <= unjudged <= hi:
            raise ValueError(f"unjudged relevance must lie in [{lo}, {hi}], got {unjudged}")
        if intents and items is None:
            raise ValueError("query intents need the items table (category and attributes per item)")
        self.unjudged = float(unjudged)
        self._judged: dict[tuple[int, int], float] = {}
        if judgments is not None:
            columns = (judgments[c].to_pylist() for c in ("query_id", "item_id", "relevance"))
            self._judged = {(q, i): r for q, i, r in zip(*columns, strict=True)}
        self._intents = {int(q): dict(intent) for q, intent in (intents or {}).items()}
        self._facts: dict[int, dict[str, Any]] = {}
        if items is not None and self._intents:
            attributes = items["attributes"].to_pylist()
            categories = items["category"].to_pylist()
            self._facts = {
                item: {**dict(attrs or []), "category": category}
                for item, attrs, category in zip(
                    items["item_id"].to_pylist(), attributes, categories, strict=True
                )
            }

    @classmethod
    def from_track(cls, track: Track, unjudged: float = 1.0) -> RelevanceOracle:
        """Judgments of the track and, for the synthetic track in memory, its query intents."""
        intents = track.extras.get("query_intent")
        return cls(
            track.judgments, items=track.items if intents else None, intents=intents, unjudged=unjudged
        )

    def grades(self, query_ids, item_ids) -> np.ndarray:
        """Relevance (1..3) of each (query_ids[i], item_ids[i]) pair."""
        queries = np.asarray(query_ids, dtype=np.int64).ravel().tolist()
        items = np.asarray(item_ids, dtype=np.int64).ravel().tolist()
        if len(queries) != len(items):
            raise ValueError(f"grades: {len(queries)} query ids but {len(items)} item ids")
        return np.array([self._grade(q, i) for q, i in zip(queries, items, strict=True)], dtype=np.float64)

    def tiers(self, query_ids, item_ids) -> np.ndarray:
        return relevance_tier(self.grades(query_ids, item_ids))

    def _grade(self, query_id: int, item_id: int) -> float:
        judged = self._judged.get((query_id, item_id))
        if judged is not None:
            return judged
        intent = self._intents.get(query_id)
        facts = self._facts.get(item_id)
        if intent is None or facts is None:
            return self.unjudged
        if facts["category"] != intent["category"]:
            return 1.0
        return 3.0 if all(facts.get(kind) == value for kind, value in intent.items()) else 2.0
