"""Glue from a loaded :class:`~onesearch_ray.data.Track` to the metric and baseline inputs.

Search track (Home Depot): queries of one split and their judgments; BM25, dense and RRF baselines.
Personalisation track (Amazon): rows of one split; popularity, co-occurrence and dense-history
baselines, always fit on the ``valid`` rows only (``docs/evaluation.md``: never on test histories).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow.compute as pc

from onesearch_ray.data import Track
from onesearch_ray.eval.baselines import (
    RRF_DEPTH,
    RRF_K,
    BM25Retriever,
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    DenseRetriever,
    PopularityBaseline,
    rrf_fuse,
)
from onesearch_ray.eval.metrics import NEXT_ITEM_KS, SEARCH_KS, next_item_metrics, search_metrics
from onesearch_ray.khqe.encoder import TextEncoder

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


def run_search_baselines(
    track: Track,
    split: str,
    item_vectors: np.ndarray | None = None,
    query_vectors: np.ndarray | None = None,
    encoder: TextEncoder | None = None,
    k: int = max(SEARCH_KS),
) -> dict[str, dict[str, Any]]:
    """BM25, dense and their RRF (k=60, depth 1000) on ``split``, each scored by :func:`search_metrics`.

    ``item_vectors`` has one row per ``track.items`` row and ``query_vectors`` one row per
    ``track.queries`` row (all splits), both in table order; a missing one is encoded with
    ``encoder``. Without vectors or an encoder only BM25 is run. Metrics are reported at the
    ``SEARCH_KS`` below ``k`` and at ``k`` itself. Each system's metrics also carry ``ms_per_query``
    (retrieval to depth 1000, plus query encoding when it happens here; no index building).
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

    if item_vectors is None and encoder is not None:
        log.info("encoding %d item titles with %s", len(titles), encoder.name)
        item_vectors = encoder.encode(titles)
    if item_vectors is not None and (query_vectors is not None or encoder is not None):
        dense = DenseRetriever(item_ids, _check_rows(item_vectors, len(item_ids), "item_vectors"))
        start = time.perf_counter()
        if query_vectors is None:
            split_vectors = encoder.encode(texts)
        else:
            split_vectors = _check_rows(query_vectors, track.queries.num_rows, "query_vectors")
            split_vectors = split_vectors[_split_rows(track, split)]
        runs["dense"] = dense.search_vectors(split_vectors, depth)
        ms["dense"] = 1000 * (time.perf_counter() - start) / n
        start = time.perf_counter()
        runs["rrf"] = rrf_fuse(runs["bm25"], runs["dense"], k=RRF_K, depth=RRF_DEPTH)
        ms["rrf"] = ms["bm25"] + ms["dense"] + 1000 * (time.perf_counter() - start) / n
    else:
        log.info("no item/query vectors and no encoder: dense and rrf skipped")

    ks = (*(cut for cut in SEARCH_KS if cut < k), k)
    results = {}
    for system, rankings in runs.items():
        ranked = {q: r[:k] for q, r in zip(query_ids, rankings, strict=True)}
        metrics = search_metrics(ranked, judgments, ks)
        results[system] = metrics | {"ms_per_query": ms[system]}
    return results


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
        item_vectors = encoder.encode(track.items["title"].to_pylist())
    if item_vectors is not None:
        systems["dense"] = DenseHistoryBaseline(
            item_ids, _check_rows(item_vectors, len(item_ids), "item_vectors")
        )
    return {
        name: next_item_metrics(system.recommend(histories, k), targets, ks)
        for name, system in systems.items()
    }
