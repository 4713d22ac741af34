"""Baselines reported beside the model (``docs/evaluation.md``): BM25, dense, RRF, and the
personalisation baselines (popularity, co-occurrence, dense history).

Every retriever returns item ids, best first, one list per query.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import faiss
import numpy as np

from onesearch_ray.behavior.views import RECENT_ITEMS
from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.khqe.encoder import TextEncoder

RRF_K = 60
RRF_DEPTH = 1000


class BM25Retriever:
    """BM25 over titles, Lucene scoring: the catalogue's own lexical index (``catalogue.lexical``),
    so this baseline and the generator's lexical term tokenise and score words the same way.

    Only items with a positive score are returned, so a query none of whose terms occurs in the
    corpus (misspellings, stopwords only, "4 x 6") returns an empty list. Equal scores (identical
    titles are common) are broken by catalogue order, so results do not depend on ``k``.
    """

    def __init__(self, titles: Sequence[str], item_ids: Sequence[int], k1: float = 1.5, b: float = 0.75):
        if len(titles) != len(item_ids):
            raise ValueError(f"{len(titles)} titles but {len(item_ids)} item ids")
        self._item_ids = np.asarray(item_ids, dtype=np.int64)
        self.index = LexicalIndex.build(titles, k1, b)
        self._postings = self.index.saturation.tocsc()  # a query reads its terms' columns
        self._idf = self.index.idf()

    def search(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Top-``k`` item ids per query (fewer when fewer items match; [] when none do)."""
        return [[item for item, _ in hits] for hits in self.search_scored(queries, k)]

    def search_scored(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (item id, BM25 score) per query, best first."""
        return [self._search_one(terms, k) for terms in self.index.query_terms(queries)]

    def _search_one(self, terms: np.ndarray, k: int) -> list[tuple[int, float]]:
        """Items with a positive score, by score then catalogue order (ties are common: equal titles)."""
        if not len(terms) or k <= 0:
            return []
        scores = np.asarray(self._postings[:, terms] @ self._idf[terms]).ravel()
        matched = np.flatnonzero(scores > 0)
        order = matched[np.lexsort((matched, -scores[matched]))][:k]
        return list(zip(self._item_ids[order].tolist(), scores[order].astype(float).tolist(), strict=True))


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """float32 C-contiguous copy with each non-zero row scaled to unit L2 norm."""
    out = np.array(vectors, dtype=np.float32, order="C", ndmin=2, copy=True)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


class DenseRetriever:
    """Exact inner-product search (faiss ``IndexFlatIP``) over unit-normalised item vectors."""

    def __init__(self, item_ids: Sequence[int], item_vectors: np.ndarray, encoder: TextEncoder | None = None):
        vectors = normalise_rows(item_vectors)
        if len(vectors) != len(item_ids):
            raise ValueError(f"{len(vectors)} item vectors but {len(item_ids)} item ids")
        self._item_ids = np.asarray(item_ids, dtype=np.int64)
        self._index = faiss.IndexFlatIP(vectors.shape[1])
        self._index.add(vectors)
        self.encoder = encoder

    @classmethod
    def from_encoder(
        cls, encoder: TextEncoder, texts: Sequence[str], item_ids: Sequence[int]
    ) -> DenseRetriever:
        """Encode the item texts with ``encoder`` and index them (queries then go through ``search``)."""
        return cls(item_ids, encoder.encode(list(texts), "passage"), encoder=encoder)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def search_vectors(self, query_vectors: np.ndarray, k: int) -> list[list[int]]:
        """Top-``k`` item ids per query vector (vectors are normalised first)."""
        queries = normalise_rows(query_vectors)
        if len(queries) == 0 or k <= 0:
            return [[] for _ in range(len(queries))]
        _, rows = self._index.search(queries, min(k, len(self._item_ids)))
        return [self._item_ids[r[r >= 0]].tolist() for r in rows]

    def search(self, queries: Sequence[str], k: int) -> list[list[int]]:
        """Encode the query texts with this retriever's encoder, then ``search_vectors``."""
        if self.encoder is None:
            raise ValueError(
                "DenseRetriever has no encoder: use search_vectors or build it with from_encoder"
            )
        return self.search_vectors(self.encoder.encode(list(queries), "query"), k)


def rrf_fuse(
    rankings_a: Sequence[Sequence[int]],
    rankings_b: Sequence[Sequence[int]],
    k: int = RRF_K,
    depth: int = RRF_DEPTH,
) -> list[list[int]]:
    """Reciprocal-rank fusion per query: score = sum of 1 / (k + rank) over the top ``depth`` of each list.

    Ties keep first-seen order (list a before list b), so the result is deterministic.
    """
    if len(rankings_a) != len(rankings_b):
        raise ValueError(f"{len(rankings_a)} vs {len(rankings_b)} rankings to fuse")
    fused = []
    for a, b in zip(rankings_a, rankings_b, strict=True):
        scores: dict[int, float] = {}
        for ranking in (a, b):
            for rank, item in enumerate(dict.fromkeys(ranking[:depth]), start=1):
                scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
        fused.append(sorted(scores, key=scores.__getitem__, reverse=True))
    return fused


# --- personalisation baselines (Amazon track) -------------------------------------------------


class PopularityBaseline:
    """The same ranking for everyone: items by how often they occur in the training rows.

    Counts every occurrence in the training targets and in the training histories (each switch can
    be turned off; histories alone reproduce the figure in docs/evaluation.md); ties by item id.
    """

    def __init__(
        self,
        item_ids: Sequence[int],
        train_histories: Sequence[Sequence[int]],
        train_targets: Sequence[int],
        count_targets: bool = True,
        count_histories: bool = True,
    ):
        counts: Counter[int] = Counter()
        if count_targets:
            counts.update(int(t) for t in train_targets)
        if count_histories:
            counts.update(int(i) for history in train_histories for i in history)
        self.counts = counts
        self.ranking = sorted((int(i) for i in item_ids), key=lambda i: (-counts[i], i))

    def recommend(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        """Top-``k`` items for each history (the histories are not looked at)."""
        return [self.ranking[:k] for _ in histories]


class CooccurrenceBaseline:
    """Score items by how often they followed each of the last ``window`` history items in training.

    Counts (history item -> target) pairs over the last ``window`` history items of every training
    row; scores a candidate by the summed counts from the row's last ``window`` items. Remaining
    slots and ties are filled by popularity. Fit on training (``valid``) rows only: test histories
    hold earlier test targets.
    """

    def __init__(
        self,
        item_ids: Sequence[int],
        train_histories: Sequence[Sequence[int]],
        train_targets: Sequence[int],
        window: int = RECENT_ITEMS,
    ):
        self.window = window
        self.popularity = PopularityBaseline(item_ids, train_histories, train_targets)
        self._pop_rank = {item: rank for rank, item in enumerate(self.popularity.ranking)}
        self.follows: dict[int, Counter[int]] = {}
        for history, target in zip(train_histories, train_targets, strict=True):
            for item in dict.fromkeys(history[-window:]):
                self.follows.setdefault(int(item), Counter())[int(target)] += 1

    def scores(self, history: Sequence[int]) -> Counter[int]:
        """Summed follow counts of the candidates from the last ``window`` history items."""
        total: Counter[int] = Counter()
        for item in dict.fromkeys(history[-self.window :]):
            total.update(self.follows.get(int(item), {}))
        return total

    def recommend(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        """Top-``k`` items per history: co-occurrence score, then popularity."""
        out = []
        for history in histories:
            scores = self.scores(history)
            ranked = sorted(scores, key=lambda i: (-scores[i], self._pop_rank.get(i, len(self._pop_rank))))
            out.append(list(dict.fromkeys(ranked[:k] + self.popularity.ranking[:k]))[:k])
        return out


class DenseHistoryBaseline:
    """Nearest items (inner product) to the mean vector of the last ``window`` history items."""

    def __init__(self, item_ids: Sequence[int], item_vectors: np.ndarray, window: int = RECENT_ITEMS):
        self.window = window
        self.retriever = DenseRetriever(item_ids, item_vectors)
        self._vectors = normalise_rows(item_vectors)
        self._row = {int(item): row for row, item in enumerate(item_ids)}

    def history_vectors(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """Mean unit vector of each history's last ``window`` items (zeros for an empty history)."""
        out = np.zeros((len(histories), self._vectors.shape[1]), dtype=np.float32)
        for i, history in enumerate(histories):
            rows = [self._row[int(item)] for item in history[-self.window :]]
            if rows:
                out[i] = self._vectors[rows].mean(axis=0)
        return out

    def recommend(self, histories: Sequence[Sequence[int]], k: int) -> list[list[int]]:
        """Top-``k`` items per history."""
        return self.retriever.search_vectors(self.history_vectors(histories), k)
