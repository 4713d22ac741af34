"""Cheap proxies of how well a codebook layout will search, from the fitted codes alone.

The first rung of the layout sweep (``tuning/``): fit a layout on item + train-query vectors, then
measure it against the ``valid`` queries and the items judged relevant for them (``test`` is never
read). The model decodes a SID coarse to fine, so what matters is whether a query and its relevant
items land under the same prefixes:

- ``icr``, ``cur_level_<i>``: code quality (``metrics.code_metrics``) of the items' SIDs.
- ``same_1`` / ``same_2``: share of (valid query, relevant item) pairs whose SIDs agree on the first
  code / on the first two codes.
- ``in_top_<m>``: share of pairs whose item's first code is among the query's ``m`` nearest
  first-level centroids (what a beam of ``m`` guided by the encoder keeps at the first step).
  ``None`` when the first level has no more than ``m`` codes (every code is then kept).
- ``reach_<n>``: the same, but the query keeps its nearest first-level codes until they hold ``n``
  items. It compares layouts at an equal candidate budget: a coarse level cannot win by keeping
  the whole catalogue, a fine one cannot lose only because each code holds few items.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import faiss
import numpy as np

from onesearch_ray.khqe.build import EncodedTexts, build_semantic_ids, enhance
from onesearch_ray.khqe.config import KHQEConfig
from onesearch_ray.khqe.keywords import KeyphraseLexicon
from onesearch_ray.khqe.quantizer import ResidualQuantizer
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer

TOP_M = (10, 50)
REACH_ITEMS = 350  # the paper's cut-off: the candidate budget of ``reach_<n>``


@dataclass
class ProxyData:
    """One encoder's raw vectors of a search track: what a layout is fitted on and measured with.

    ``pairs`` holds one (row in ``valid_queries``, row in ``items``) per relevant judgment.
    """

    item_ids: np.ndarray
    items: EncodedTexts
    train_queries: EncodedTexts | None
    valid_queries: EncodedTexts
    pairs: np.ndarray
    lexicon: KeyphraseLexicon | None = None
    phrase_vectors: np.ndarray | None = None


def relevance_pairs(relevant: Sequence[Collection[int]], item_ids: np.ndarray) -> np.ndarray:
    """(query row, item row) of every relevant item; ``relevant[q]`` holds query q's item ids."""
    row_of = {int(item): row for row, item in enumerate(np.asarray(item_ids).tolist())}
    pairs = []
    for query_row, items in enumerate(relevant):
        for item in sorted(items):
            if int(item) not in row_of:
                raise ValueError(f"relevance pairs: judged item {item} is not in the catalogue")
            pairs.append((query_row, row_of[int(item)]))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def fit_and_measure(
    data: ProxyData, config: KHQEConfig, top_m: Sequence[int] = TOP_M, reach_items: int = REACH_ITEMS
) -> tuple[SemanticIdTokenizer, dict]:
    """Fit ``config``'s layout exactly as the encode job does, then score it by the proxies."""
    if len(data.pairs) == 0:
        raise ValueError("layout proxies need at least one (valid query, relevant item) pair")
    tokenizer, report = build_semantic_ids(
        data.item_ids, data.items, data.train_queries, data.lexicon, data.phrase_vectors, config
    )
    started = time.perf_counter()
    lexicon = data.lexicon if report["keyword_enhancement"] else None
    query_vectors, _ = enhance(data.valid_queries, lexicon, data.phrase_vectors, config.keyword_text_weight)
    proxies = layout_proxies(
        tokenizer.quantizer,
        tokenizer.item_codes(data.item_ids),
        query_vectors,
        data.pairs,
        top_m,
        reach_items,
    )
    cur = {f"cur_{key}": value for key, value in report["cur"].items() if key.startswith("level_")}
    return tokenizer, {
        "layout": report["layout"],
        "keyword_enhancement": report["keyword_enhancement"],
        "icr": report["icr"],
        **cur,
        **proxies,
        "n_pairs": len(data.pairs),
        "fit_seconds": report["fit_seconds"],
        "proxy_seconds": time.perf_counter() - started,
    }


def layout_proxies(
    quantizer: ResidualQuantizer,
    item_codes: np.ndarray,
    query_vectors: np.ndarray,
    pairs: np.ndarray,
    top_m: Sequence[int] = TOP_M,
    reach_items: int = REACH_ITEMS,
) -> dict[str, float | None]:
    """The prefix proxies of the module docstring for fitted codebooks.

    ``item_codes`` are the items' SIDs (rows as in ``pairs[:, 1]``); queries are encoded here with
    the same frozen codebooks, as their query SIDs are.
    """
    pairs = np.asarray(pairs, dtype=np.int64)
    query_rows, item_rows = pairs[:, 0], pairs[:, 1]
    query_codes = quantizer.encode(query_vectors)
    depth = min(2, query_codes.shape[1])
    same = query_codes[query_rows] == item_codes[item_rows]
    proxies: dict[str, float | None] = {
        "same_1": float(same[:, 0].mean()),
        "same_2": float(same[:, :depth].all(axis=1).mean()),
    }
    first = quantizer.rq_centroids[0]
    n_codes = len(first)
    _, order = faiss.knn(np.ascontiguousarray(query_vectors, np.float32), first, n_codes)
    # rank of every first-level code in each query's distance order (0 = nearest)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n_codes)[None, :], axis=1)
    item_rank = rank[query_rows, item_codes[item_rows, 0]]
    for m in top_m:
        proxies[f"in_top_{m}"] = float((item_rank < m).mean()) if m < n_codes else None
    items_per_code = np.bincount(item_codes[:, 0], minlength=n_codes)
    held = np.cumsum(items_per_code[order], axis=1)
    kept = np.minimum((held < reach_items).sum(axis=1) + 1, n_codes)  # codes until n items are held
    proxies[f"reach_{reach_items}"] = float((item_rank < kept[query_rows]).mean())
    return proxies
