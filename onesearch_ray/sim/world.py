"""The simulated world: the synthetic track's users, queries and items with their known facts.

Everything the simulated users decide by comes from the generator (``onesearch_ray.data.synthetic``):
each query's intent (``read_world``), each user's preferred categories, brands and colours (the
users table), and the behaviour model that wrote the log (``click_model``). Relevance is the
generator's rule (``RelevanceOracle`` over the intents): 3 = the whole intent, 2 = the category only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from onesearch_ray.behavior import BehaviorIndex
from onesearch_ray.data import SyntheticConfig, Track, load_track
from onesearch_ray.data.synthetic import click_model, read_world
from onesearch_ray.rewards.relevance import RelevanceOracle


def _codes(values: Sequence[str | None], vocabulary: dict[str, int]) -> np.ndarray:
    """Index of each value in ``vocabulary`` (grown as new values appear); -1 for None."""
    return np.array(
        [-1 if v is None else vocabulary.setdefault(v, len(vocabulary)) for v in values], np.int64
    )


def _preference_matrix(per_user: Sequence[Sequence[str] | None], vocabulary: dict[str, int]) -> np.ndarray:
    """(users, values + 1) bool; the last column stays False, so an item without the value (-1)
    matches no preference."""
    matrix = np.zeros((len(per_user), len(vocabulary) + 1), dtype=bool)
    for row, values in enumerate(per_user):
        matrix[row, [vocabulary[v] for v in values or () if v in vocabulary]] = True
    return matrix


@dataclass
class World:
    """Users, queries and items of one synthetic track, and how its users behave."""

    track: Track
    behaviour: SyntheticConfig  # the generator config: its click/order model parameters
    relevance_oracle: RelevanceOracle
    item_ids: np.ndarray  # catalogue order
    item_facts: np.ndarray  # (items, 3): category, brand, colour codes (-1: none)
    preferences: tuple[np.ndarray, np.ndarray, np.ndarray]  # per user: category, brand, colour matrices
    user_ids: list[str]
    user_activity: np.ndarray  # sessions in the log + 1 (a user absent from it still searches)
    query_ids: np.ndarray
    query_texts: list[str]
    query_category: np.ndarray  # category code of each query's intent
    query_log_count: np.ndarray  # search sessions of each query in the log
    behaviour_index: BehaviorIndex
    cold_items: frozenset[int]

    @classmethod
    def from_directory(cls, data: str | Path, cold_items: Collection[int] = ()) -> World:
        """The world of a track ``write_synthetic`` wrote; ``cold_items``: item ids held out of the
        systems' training (they join the served catalogue live before the simulation)."""
        config, intents = read_world(data)
        return cls.from_track(load_track(data), config, intents, cold_items)

    @classmethod
    def from_track(
        cls,
        track: Track,
        behaviour: SyntheticConfig,
        intents: dict[int, dict[str, str]],
        cold_items: Collection[int] = (),
    ) -> World:
        if track.queries is None or track.users is None or track.interactions is None:
            raise ValueError(f"track {track.name!r} needs queries, users and interactions to simulate")
        items, users, queries = track.items, track.users, track.queries
        item_ids = items["item_id"].to_numpy()
        unknown = sorted(set(cold_items) - set(item_ids.tolist()))
        if unknown:
            raise ValueError(f"cold items {unknown[:5]} are not in track {track.name!r}")
        vocab: tuple[dict[str, int], dict[str, int], dict[str, int]] = ({}, {}, {})
        colours = [dict(a or []).get("colour") for a in items["attributes"].to_pylist()]
        facts = np.stack(
            [
                _codes(items["category"].to_pylist(), vocab[0]),
                _codes(items["brand"].to_pylist(), vocab[1]),
                _codes(colours, vocab[2]),
            ],
            axis=1,
        )
        columns = ("preferred_categories", "preferred_brands", "preferred_colours")
        category, brand, colour = (
            _preference_matrix(users[c].to_pylist(), v) for c, v in zip(columns, vocab, strict=True)
        )
        user_ids = users["user_id"].to_pylist()
        query_ids = queries["query_id"].to_numpy()
        missing = [int(q) for q in query_ids if int(q) not in intents]
        if missing:
            raise ValueError(f"queries {missing[:5]} of track {track.name!r} have no known intent")
        return cls(
            track=track,
            behaviour=behaviour,
            relevance_oracle=RelevanceOracle(items=items, intents=intents),
            item_ids=item_ids,
            item_facts=facts,
            preferences=(category, brand, colour),
            user_ids=user_ids,
            user_activity=_session_counts(track, "user_id", user_ids) + 1.0,
            query_ids=query_ids,
            query_texts=queries["query"].to_pylist(),
            query_category=np.array([vocab[0].get(intents[int(q)]["category"], -1) for q in query_ids]),
            query_log_count=_session_counts(track, "query_id", query_ids.tolist()),
            behaviour_index=BehaviorIndex.from_track(track),
            cold_items=frozenset(int(i) for i in cold_items),
        )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @cached_property
    def item_set(self) -> frozenset[int]:
        return frozenset(self.item_ids.tolist())

    @cached_property
    def _id_order(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.item_ids, kind="stable")
        return order, self.item_ids[order]

    def rows_of(self, item_ids: Sequence[int]) -> np.ndarray:
        """Catalogue rows of ``item_ids`` (all must be in the catalogue)."""
        order, sorted_ids = self._id_order
        return order[np.searchsorted(sorted_ids, np.asarray(item_ids, dtype=np.int64))]

    def relevance(self, query_id: int, item_ids: Sequence[int]) -> np.ndarray:
        """Known relevance (1..3) of ``item_ids`` for the query."""
        grades = self.relevance_oracle.grades(np.full(len(item_ids), query_id), item_ids)
        return grades.astype(np.int64)

    def likes(self, user: int, item_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Whether user ``user`` (a row of the users table) prefers each item's brand, colour, category."""
        facts = self.item_facts[self.rows_of(item_ids)]
        category, brand, colour = self.preferences
        return brand[user, facts[:, 1]], colour[user, facts[:, 2]], category[user, facts[:, 0]]

    def outcome(
        self, user: int, query_id: int, item_ids: Sequence[int], u_click: np.ndarray, u_order: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(relevance, clicked, ordered, P(order)) per shown item, best position first, under the
        generator's behaviour model; ``u_click`` and ``u_order`` are the search's uniform draws per
        position. P(order) = P(click) x P(order | click), the expectation the draws sample."""
        relevance = self.relevance(query_id, item_ids)
        p_click, p_order = click_model(self.behaviour, relevance, *self.likes(user, item_ids))
        n = len(relevance)
        clicked = u_click[:n] < p_click
        return relevance, clicked, clicked & (u_order[:n] < p_order), p_click * p_order


def _session_counts(track: Track, column: str, keys: Sequence) -> np.ndarray:
    """Distinct log sessions per key (user or query) of ``keys``, in their order."""
    log = track.interactions.filter(pc.is_valid(track.interactions[column]))
    pairs = set(zip(log[column].to_pylist(), log["session_id"].to_pylist(), strict=True))
    counts: dict = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    return np.array([counts.get(k, 0) for k in keys], dtype=np.float64)
