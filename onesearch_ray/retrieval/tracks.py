"""Glue from a loaded :class:`~onesearch_ray.data.Track` to the metric and baseline inputs.

Search track (Home Depot): queries of one split and their judgments; BM25, dense and RRF baselines.
Personalisation track (Amazon): rows of one split; popularity, co-occurrence and dense-history
baselines, always fit on the ``valid`` rows only (``docs/evaluation.md``: never on test histories).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc

from onesearch_ray.data import Track
from onesearch_ray.khqe.encoder import TextEncoder
from onesearch_ray.metrics import NEXT_ITEM_KS, SEARCH_KS, next_item_metrics, search_metrics
from onesearch_ray.retrieval.baselines import (
    RRF_DEPTH,
    RRF_K,
    BM25Retriever,
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    DenseRetriever,
    PopularityBaseline,
    rrf_fuse,
)

log = logging.getLogger(__name__)

NEXT_ITEM_TRAIN_SPLIT = "valid"  # the only rows the personalisation baselines may learn from


def search_eval_inputs(track: Track, split: str) -> tuple[list[int], list[str], dict[int, dict[int, float]]]:
    """Query ids and texts of ``split`` (table order) and ``{query_id: {item_id: relevance}}`` for them."""
    if track.judgments is None:
        raise ValueError(f"track {track.name!r} has no judgments (not a search track)")
    queries = track.split_queries(split)
    query_ids = queries["query_id"].to_pylist()
    judgments: dict[int, dict[int, float]] = {qid: {} for qid in query_ids}
    rows = track.judgments.filter(pc.is_in(track.judgments["query_id"], value_set=queries["query_id"]))
    for qid, item, rel in zip(
        rows["query_id"].to_pylist(), rows["item_id"].to_pylist(), rows["relevance"].to_pylist(), strict=True
    ):
        judgments[qid][item] = rel
    return query_ids, queries["query"].to_pylist(), judgments


def next_item_eval_inputs(track: Track, split: str) -> tuple[list[list[int]], list[int], list[str]]:
    """Histories (oldest first), next-item targets and user ids of the sequence rows of ``split``."""
    if track.sequences is None:
        raise ValueError(f"track {track.name!r} has no sequences (not a personalisation track)")
    rows = track.sequences.filter(pc.equal(track.sequences["split"], split))
    return rows["history_item_ids"].to_pylist(), rows["item_id"].to_pylist(), rows["user_id"].to_pylist()


def _split_rows(track: Track, split: str) -> np.ndarray:
    """Positions in ``track.queries`` of the queries of ``split``."""
    return np.flatnonzero(np.asarray(track.queries["split"].to_pylist()) == split)


def _check_rows(vectors: np.ndarray, n: int, what: str) -> np.ndarray:
    if len(vectors) != n:
        raise ValueError(
            f"{what}: {len(vectors)} vectors but the table has {n} rows (one per row, table order)"
        )
    return vectors


@dataclass
class DenseInputs:
    """What one dense retriever needs: ``item_vectors`` (one row per ``track.items`` row) and
    ``query_vectors`` (one row per ``track.queries`` row, all splits), both in table order; a missing
    one is encoded with ``encoder`` (items as passages, the split's queries as queries)."""

    item_vectors: np.ndarray | None = None
    query_vectors: np.ndarray | None = None
    encoder: TextEncoder | None = None


def run_search_baselines(
    track: Track,
    split: str,
    item_vectors: np.ndarray | None = None,
    query_vectors: np.ndarray | None = None,
    encoder: TextEncoder | None = None,
    k: int = max(SEARCH_KS),
    dense_variants: Mapping[str, DenseInputs] | None = None,
) -> dict[str, dict[str, Any]]:
    """BM25, dense and their RRF (k=60, depth 1000) on ``split``, each scored by :func:`search_metrics`.

    ``item_vectors``, ``query_vectors`` and ``encoder`` are the ``dense`` system's
    :class:`DenseInputs`; each of ``dense_variants`` (e.g. ``{"e5": ...}``) adds ``dense_<name>`` and
    ``rrf_<name>`` (BM25 fused with it) the same way. A dense system without vectors or an encoder
    is skipped. Metrics are reported at the ``SEARCH_KS`` below ``k`` and at ``k`` itself. Each
    system's metrics also carry ``ms_per_query`` (retrieval to depth 1000, plus query encoding when
    it happens here; no index building).
    """
    query_ids, texts, judgments = search_eval_inputs(track, split)
    titles, item_ids = track.items["title"].to_pylist(), track.items["item_id"].to_pylist()
    depth = max(k, RRF_DEPTH)
    n = max(len(texts), 1)

    start = time.perf_counter()
    bm25 = BM25Retriever(titles, item_ids)
    log.info("bm25 index: %.1f s", time.perf_counter() - start)
    start = time.perf_counter()
    runs = {"bm25": bm25.search(texts, depth)}
    ms = {"bm25": 1000 * (time.perf_counter() - start) / n}

    systems = {"": DenseInputs(item_vectors, query_vectors, encoder)}
    systems.update({f"_{name}": inputs for name, inputs in (dense_variants or {}).items()})
    for suffix, inputs in systems.items():
        dense, rrf = f"dense{suffix}", f"rrf{suffix}"
        retriever = _dense_retriever(track, inputs)
        if retriever is None:
            log.info("no item/query vectors and no encoder: %s and %s skipped", dense, rrf)
            continue
        start = time.perf_counter()
        runs[dense] = retriever.search_vectors(_split_query_vectors(track, split, texts, inputs), depth)
        ms[dense] = 1000 * (time.perf_counter() - start) / n
        start = time.perf_counter()
        runs[rrf] = rrf_fuse(runs["bm25"], runs[dense], k=RRF_K, depth=RRF_DEPTH)
        ms[rrf] = ms["bm25"] + ms[dense] + 1000 * (time.perf_counter() - start) / n

    ks = (*(cut for cut in SEARCH_KS if cut < k), k)
    results = {}
    for system, rankings in runs.items():
        ranked = {q: r[:k] for q, r in zip(query_ids, rankings, strict=True)}
        metrics = search_metrics(ranked, judgments, ks)
        results[system] = metrics | {"ms_per_query": ms[system]}
    return results


def _dense_retriever(track: Track, inputs: DenseInputs) -> DenseRetriever | None:
    """The item index of one dense system (items encoded here when no vectors came); None when
    the item or the query side has neither vectors nor an encoder."""
    item_vectors, encoder = inputs.item_vectors, inputs.encoder
    if encoder is None and (item_vectors is None or inputs.query_vectors is None):
        return None
    if item_vectors is None:
        log.info("encoding %d item titles with %s", track.items.num_rows, encoder.name)
        item_vectors = encoder.encode(track.items["title"].to_pylist(), "passage")
    item_ids = track.items["item_id"].to_pylist()
    return DenseRetriever(item_ids, _check_rows(item_vectors, len(item_ids), "item_vectors"))


def _split_query_vectors(track: Track, split: str, texts: list[str], inputs: DenseInputs) -> np.ndarray:
    """Vectors of the split's queries: rows of ``query_vectors``, else ``texts`` encoded now."""
    if inputs.query_vectors is None:
        return inputs.encoder.encode(texts, "query")
    vectors = _check_rows(inputs.query_vectors, track.queries.num_rows, "query_vectors")
    return vectors[_split_rows(track, split)]


def run_next_item_baselines(
    track: Track,
    split: str = "test",
    item_vectors: np.ndarray | None = None,
    encoder: TextEncoder | None = None,
    ks: tuple[int, ...] = NEXT_ITEM_KS,
) -> dict[str, dict[str, Any]]:
    """Popularity, co-occurrence and (with vectors or an encoder) dense-history baselines on ``split``.

    All fit on the ``valid`` rows only. ``item_vectors`` has one row per ``track.items`` row.
    """
    if split == NEXT_ITEM_TRAIN_SPLIT:
        log.warning("evaluating on %r, the split the baselines are fit on", split)
    train_histories, train_targets, _ = next_item_eval_inputs(track, NEXT_ITEM_TRAIN_SPLIT)
    histories, targets, _ = next_item_eval_inputs(track, split)
    item_ids = track.items["item_id"].to_pylist()
    k = max(ks)
    systems: dict[str, Any] = {
        "popularity": PopularityBaseline(item_ids, train_histories, train_targets),
        "cooccurrence": CooccurrenceBaseline(item_ids, train_histories, train_targets),
    }
    if item_vectors is None and encoder is not None:
        item_vectors = encoder.encode(track.items["title"].to_pylist(), "passage")
    if item_vectors is not None:
        systems["dense"] = DenseHistoryBaseline(
            item_ids, _check_rows(item_vectors, len(item_ids), "item_vectors")
        )
    return {
        name: next_item_metrics(system.recommend(histories, k), targets, ks)
        for name, system in systems.items()
    }
