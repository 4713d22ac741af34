"""The live catalogue: segments a search reads as one snapshot, adds that cost what they add.

A :class:`Snapshot` is immutable: the segments, the term weights and the vocabulary size at the
moment it was published. A search takes ``catalogue.snapshot`` once and reads only that, so it never
sees a half-added batch. ``add`` builds a segment of the new items alone (cost in proportion to them),
then publishes a new snapshot; small segments merge as they pile up (the newest two while the older
is at most twice the newer: log-many segments, each item re-sorted log-many times). The base segment
(the trained catalogue) is never merged into.

Lexical terms: the vocabulary only grows; a term first seen in an added title gets its IDF at that
moment as its weight (known terms keep the model's learned weights), the length statistics stay the
base's, as in ``catalogue.lexical.LexicalIndex``.

Shards (``catalogue.shards``): a catalogue built with ``shard=(i, n)`` keeps only the items
``shard_of`` gives it, but follows every add's titles, so its vocabulary, term weights and
``records`` (adds applied) stay those of the whole catalogue; a planner's catalogue built with a
``scorer`` plans over every item and hands the item step to the shards.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from onesearch_ray.catalogue.lexical import (
    LexicalIndex,
    item_term,
    known_terms,
    lucene_idf,
    repeat_keys,
    saturation_rows,
)
from onesearch_ray.catalogue.segment import Segment, build_segment, merge_segments
from onesearch_ray.text import tokenize


def shard_of(item_ids: np.ndarray, n_shards: int) -> np.ndarray:
    """The shard that owns each item id: a fixed 64-bit mix of the id (splitmix64's finaliser), so
    consecutive ids spread evenly and an item's owner never changes."""
    x = np.asarray(item_ids, dtype=np.int64).astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(n_shards)).astype(np.int64)


@dataclass(frozen=True)
class NewItems:
    """Items added live: ids, titles, raw text vectors and full KHQE SIDs (codes)."""

    item_ids: np.ndarray
    titles: list[str]
    vectors: np.ndarray
    codes: np.ndarray

    def __post_init__(self) -> None:
        if not len(self.item_ids) == len(self.titles) == len(self.vectors) == len(self.codes):
            raise ValueError("new items: one title, vector and code row per item id")

    @classmethod
    def joined(cls, batches: Sequence[NewItems]) -> NewItems:
        """Several adds as one (a replay of the add log joins as one segment)."""
        return cls(
            np.concatenate([b.item_ids for b in batches]),
            [t for b in batches for t in b.titles],
            np.concatenate([b.vectors for b in batches]),
            np.concatenate([b.codes for b in batches]),
        )


@dataclass(frozen=True, eq=False)
class Snapshot:
    segments: tuple[Segment, ...]
    term_weights: np.ndarray  # (terms,) lexical weight of each term (scales folded in)
    vocabulary: dict[str, int]  # shared and append-only: ids >= len(term_weights) are ignored here
    version: int
    centroids: tuple[np.ndarray, ...] = ()  # per index level: (level size, dim) residual centroids
    records: int = 0  # adds applied since the base (a shard and its planner agree on it)
    model: str = ""  # the model whose trained rows the base holds
    scorer: Scorer | None = None  # where the item step runs when not on these segments (shards)

    @property
    def n_items(self) -> int:
        return sum(len(s) for s in self.segments)

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return self.segments[0].level_sizes

    def query_terms(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each text's known term ids (each once), as ``LexicalIndex.query_terms``."""
        return [known_terms(self.vocabulary, doc, len(self.term_weights)) for doc in tokenize(texts)]

    def item_terms(self, rows: Sequence[int]) -> np.ndarray:
        """The co-purchase term ids of trained item ``rows``, as ``LexicalIndex.item_terms``."""
        return known_terms(self.vocabulary, [item_term(r) for r in rows], len(self.term_weights))

    def repeat_terms(self, rows: Sequence[int]) -> np.ndarray:
        """The repeat term ids of recent trained item ``rows``, as ``LexicalIndex.repeat_terms``."""
        return known_terms(self.vocabulary, repeat_keys(rows), len(self.term_weights))

    def group_facts(self, level: int, keys: np.ndarray, terms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per key at index level ``level``: the items under it, and the best lexical score any of
        them can have (block-max bound, -inf where no item is); no item is read."""
        weights = self.term_weights[terms]
        facts = [s.group_facts(level, keys, terms, weights) for s in self.segments]
        return sum(f[0] for f in facts), np.max([f[1] for f in facts], axis=0)

    def children(self, level: int, parents: np.ndarray) -> np.ndarray:
        """The keys at ``level + 1`` under ``parents`` (sorted) that hold an item, sorted."""
        size = self.level_sizes[level + 1]
        keys = (parents[:, None] * size + np.arange(size)).ravel()
        held = np.zeros(len(keys), dtype=bool)
        for segment in self.segments:
            held |= segment.levels[level + 1].find(keys)[1]
        return keys[held]

    def top_items(
        self,
        plans: Sequence[tuple[int, np.ndarray, np.ndarray]],
        queries: np.ndarray,
        terms: Sequence[np.ndarray],
        k: int,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each search of a batch, the ``k`` best (item ids, scores), best first, under its plan:
        (index level, kept keys at that level, a score bonus per key); ``queries`` (B, dim).

        Only the kept groups' rows are read. Where a batch keeps a large share of a segment (a small
        catalogue), one matrix product of the batch and the segment is cheaper than a product per
        search over its slices (measured: ~10 ns against ~67 ns a row and search), so it is used.
        BLAS runs on one thread here: these products are small, and a second thread spinning beside
        them doubled the CPU a search costs without making it faster (docs/benchmarks.md)."""
        queries = np.asarray(queries, np.float32)
        if self.scorer is not None:
            return self.scorer(self, plans, queries, terms, k)
        with threadpool_limits(limits=1, user_api="blas"):
            return self._top_items(plans, queries, terms, k)

    def _top_items(self, plans, queries, terms, k) -> list[tuple[np.ndarray, np.ndarray]]:
        dense = [self._batch_product(segment, plans, queries) for segment in self.segments]
        out = []
        for b, (level, keys, bonus) in enumerate(plans):
            weights = self.term_weights[terms[b]]
            ids, scores = [], []
            for segment, products in zip(self.segments, dense, strict=True):
                rows, segment_scores = segment.candidates(
                    level,
                    keys,
                    bonus,
                    queries[b],
                    terms[b],
                    weights,
                    None if products is None else products[b],
                    k,
                )
                ids.append(segment.item_ids[rows])
                scores.append(segment_scores)
            all_ids, all_scores = np.concatenate(ids), np.concatenate(scores)
            best = top_indices(all_scores, k, all_ids)
            out.append((all_ids[best], all_scores[best]))
        return out

    @staticmethod
    def _batch_product(segment: Segment, plans, queries: np.ndarray) -> np.ndarray | None:
        if segment.vectors.dtype != np.float32:  # float16 matrix products are slow on CPUs (AVX2)
            return None
        no_terms = np.zeros(0, np.int64)
        kept = sum(
            int(segment.group_facts(level, keys, no_terms, no_terms)[0].sum()) for level, keys, _ in plans
        )
        if kept <= BATCH_PRODUCT_SHARE * len(plans) * len(segment):
            return None
        return queries @ segment.vectors.astype(np.float32, copy=False).T

    def locate(self, item_ids: Sequence[int]) -> list[tuple[Segment, int] | None]:
        """For each id: (its segment, its row), or None when the catalogue does not hold it."""
        wanted = np.asarray(item_ids, dtype=np.int64)
        found: list[tuple[Segment, int] | None] = [None] * len(wanted)
        for segment in self.segments:
            rows, present = segment.rows_of(wanted)
            for slot in np.flatnonzero(present).tolist():
                found[slot] = (segment, int(rows[slot]))
        return found

    def has(self, item_id: int) -> bool:
        return self.locate([item_id])[0] is not None

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments) + self.term_weights.nbytes


BATCH_PRODUCT_SHARE = 0.15  # kept rows / (batch x segment rows) above which one batch product wins


class Scorer(Protocol):
    def __call__(
        self, snapshot: Snapshot, plans: Sequence, queries: np.ndarray, terms: Sequence[np.ndarray], k: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``Snapshot.top_items`` for ``snapshot``, computed elsewhere (``catalogue.shards.ShardScorer``)."""
        ...


class LiveCatalogue:
    """The searchable catalogue: a trained base segment plus the items added since, one snapshot at a
    time. ``lexical`` supplies the base's vocabulary and length statistics (never mutated here)."""

    def __init__(
        self,
        base: Segment,
        lexical: LexicalIndex,
        term_weights: np.ndarray,
        lexical_scale: float = 1.0,
        vector_dtype: str = "float32",
        centroids: tuple[np.ndarray, ...] = (),
        model: str = "",
        shard: tuple[int, int] | None = None,
        scorer: Scorer | None = None,
        first_pass_rows: int = 0,
    ) -> None:
        """``term_weights``: the model's weight of each of ``lexical``'s terms; ``lexical_scale`` multiplies
        every lexical score; ``vector_dtype`` stores added items' dense rows (float16 halves them);
        ``centroids``: each index level's residual centroids (the geometry that plans deeper levels);
        ``model``: the name of the model whose rows ``base`` holds; ``shard``: (index, count) when this
        catalogue keeps one shard's items (``base`` holds only those); ``scorer``: where the item step
        runs instead of these segments (a planner over shards); ``first_pass_rows``: segments of at
        least this many items (> 0) get a first pass (``catalogue.segment.FirstPass``)."""
        if len(term_weights) != lexical.n_terms:
            raise ValueError(f"{len(term_weights)} term weights for a vocabulary of {lexical.n_terms}")
        self.lexical_stats = (lexical.average_length, lexical.k1, lexical.b)
        self.vector_dtype = np.dtype(vector_dtype)
        self.shard = shard
        self.first_pass_rows = first_pass_rows
        self._lock = threading.Lock()
        self._document_frequency = lexical.document_frequency.astype(np.float64)
        self._weights = np.asarray(term_weights, np.float32)  # unscaled: learned, then IDFs of new terms
        self._learned_terms = len(term_weights)
        self._scale = float(lexical_scale)
        self._all_items = lexical.n_items  # of the whole catalogue, shards' items included (for IDF)
        self._snapshot = Snapshot(
            (base,),
            self._weights * self._scale,
            dict(lexical.vocabulary),
            0,
            tuple(centroids),
            model=model,
            scorer=scorer,
        )

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def learned_weights(self) -> np.ndarray:
        """The base's own term weights (unscaled), as given: what ``rebase`` replaces."""
        return self._weights[: self._learned_terms]

    @property
    def lexical_scale(self) -> float:
        return self._scale

    def add(self, items: NewItems, records: int = 1) -> Snapshot:
        """Make ``items`` searchable (they score by their own vectors and title terms, bias 0); a shard
        keeps its own of them. ``records``: how many adds of the add log they are (a replay joins
        many as one)."""
        with self._lock:
            current = self._snapshot
            taken = [
                i for i, where in zip(items.item_ids, current.locate(items.item_ids), strict=True) if where
            ]
            if taken:
                raise ValueError(f"items {taken[:5]} are already in the catalogue")
            saturation, frequency, weights = self._lexical_rows(current, items.titles)
            segments = current.segments
            kept = np.ones(len(items.item_ids), bool) if self.shard is None else self._owned(items.item_ids)
            if kept.any():
                rows = np.flatnonzero(kept)
                segment = build_segment(
                    np.asarray(items.item_ids)[rows],
                    np.asarray(items.vectors, dtype=self.vector_dtype)[rows],
                    np.zeros(len(rows), np.float32),
                    np.asarray(items.codes)[rows],
                    [items.titles[row] for row in rows.tolist()],
                    saturation[rows],
                    current.level_sizes,
                    self.first_pass_rows,
                )
                segments = _merged([*segments, segment], self.first_pass_rows)
            self._document_frequency, self._weights = frequency, weights  # only once all is built
            self._all_items += len(items.item_ids)
            self._snapshot = replace(
                current,
                segments=segments,
                term_weights=weights * self._scale,
                version=current.version + 1,
                records=current.records + records,
            )
            return self._snapshot

    def _owned(self, item_ids: np.ndarray) -> np.ndarray:
        index, count = self.shard
        return shard_of(item_ids, count) == index

    def rebase(
        self, base: Segment, term_weights: np.ndarray, lexical_scale: float, model: str = ""
    ) -> Snapshot:
        """Serve the same added items over another base: a swapped-in model (named ``model``) of the
        same run (same items, vocabulary and SIDs; its own trained rows, term weights and scale)."""
        if len(term_weights) != self._learned_terms or len(base) != len(self._snapshot.segments[0]):
            raise ValueError("rebase: the new base must hold the same items and terms as the old one")
        with self._lock:
            current = self._snapshot
            self._weights = self._weights.copy()
            self._weights[: self._learned_terms] = term_weights
            self._scale = float(lexical_scale)
            self._snapshot = replace(
                current,
                segments=(base, *current.segments[1:]),
                term_weights=self._weights * self._scale,
                version=current.version + 1,
                model=model,
            )
            return self._snapshot

    def _lexical_rows(
        self, current: Snapshot, titles: Sequence[str]
    ) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """The new titles' saturation rows, the document frequencies with them, and the term weights
        with each term none had before at its IDF (new ids join the shared vocabulary at once: a
        reader ignores ids its snapshot has no weight for)."""
        saturation = saturation_rows(tokenize(titles), current.vocabulary, *self.lexical_stats)
        width = saturation.shape[1]
        frequency = np.zeros(width)
        frequency[: len(self._document_frequency)] = self._document_frequency
        frequency += np.bincount(saturation.indices, minlength=width)
        idf = lucene_idf(self._all_items + len(titles), frequency[len(self._weights) :])
        return saturation, frequency, np.concatenate([self._weights, idf])


def _merged(segments: list[Segment], first_pass_rows: int) -> tuple[Segment, ...]:
    """Merge the newest two added segments while the older is at most twice the newer."""
    while len(segments) > 2 and len(segments[-2]) <= 2 * len(segments[-1]):
        segments[-2:] = [merge_segments(segments[-2:], first_pass_rows)]
    return tuple(segments)


def top_indices(scores: np.ndarray, k: int, ids: np.ndarray) -> np.ndarray:
    """Indices of the ``k`` best scores, best first, equal scores by item id (so a ranking does not
    depend on where items are stored: segments, shards); a partition, then a sort of those k only."""
    candidates = np.arange(len(scores))
    if k <= 0:
        return candidates[:0]
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero(scores >= kth)
    order = np.lexsort((ids[candidates], -scores[candidates]))
    return candidates[order[:k]]
