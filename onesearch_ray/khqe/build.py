"""KHQE end to end on in-memory arrays: keyword fusion, then RQ-OPQ codes, then the report.

The Ray Data shell (``pipelines/prepare.py``) computes raw text embeddings in parallel and hands
them here; everything below is pure numpy/faiss so it is testable without a cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from onesearch_ray.khqe.config import KHQEConfig
from onesearch_ray.khqe.keywords import KeyphraseLexicon, fuse_keyword_embeddings, match_rows
from onesearch_ray.khqe.metrics import code_metrics
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer

log = logging.getLogger(__name__)


@dataclass
class EncodedTexts:
    """Raw encoder output for one corpus of texts, row-aligned with ``texts``."""

    texts: list[str]
    vectors: np.ndarray


def enhance(
    corpus: EncodedTexts, lexicon: KeyphraseLexicon | None, phrase_vectors: np.ndarray | None, weight: float
) -> tuple[np.ndarray, float]:
    """Keyword-fused vectors and the share of texts that matched at least one keyphrase."""
    if lexicon is None or phrase_vectors is None or len(lexicon) == 0:
        return corpus.vectors, 0.0
    rows = match_rows(lexicon, corpus.texts)
    matched_share = float(np.mean([bool(r) for r in rows])) if rows else 0.0
    return fuse_keyword_embeddings(corpus.vectors, rows, phrase_vectors, weight), matched_share


def build_semantic_ids(
    item_ids: np.ndarray,
    items: EncodedTexts,
    train_queries: EncodedTexts | None,
    lexicon: KeyphraseLexicon | None,
    phrase_vectors: np.ndarray | None,
    config: KHQEConfig,
) -> tuple[SemanticIdTokenizer, dict]:
    """Fit codebooks on (enhanced) item + train-query vectors; return the tokenizer and a report."""
    use_keywords = config.keyword_enhancement and lexicon is not None
    weight = config.keyword_text_weight
    item_vectors, item_match = enhance(items, lexicon if use_keywords else None, phrase_vectors, weight)
    query_vectors, query_match = (None, 0.0)
    if train_queries is not None and len(train_queries.texts):
        query_vectors, query_match = enhance(
            train_queries, lexicon if use_keywords else None, phrase_vectors, weight
        )
    started = time.perf_counter()
    tokenizer = SemanticIdTokenizer.fit(
        item_ids,
        item_vectors,
        query_vectors,
        config.quantizer,
        metadata={"khqe": config.to_dict()},
    )
    fit_seconds = time.perf_counter() - started
    raw = code_metrics(tokenizer.encode(item_vectors), tokenizer.layout.level_sizes)
    report = {
        **tokenizer.metrics(),
        "icr_raw": raw["icr"],
        "items_per_sid_raw": raw["items_per_sid"],
        "layout_requested": config.quantizer.layout,
        "layout": str(tokenizer.layout),
        "keyword_enhancement": use_keywords,
        "lexicon_size": len(lexicon) if lexicon is not None else 0,
        "items_with_keyphrase": item_match,
        "train_queries_with_keyphrase": query_match,
        "fit_seconds": fit_seconds,
        "n_train_queries": 0 if query_vectors is None else len(query_vectors),
    }
    log.info("codes: ICR %.4f over %d items, layout %s", report["icr"], report["n_items"], report["layout"])
    return tokenizer, report


def item_text(title: str, brand: str | None = None) -> str:
    """The text an item is embedded from: its title, with the brand prepended when the title lacks it."""
    title = (title or "").strip()
    if brand and brand.strip() and brand.strip().lower() not in title.lower():
        return f"{brand.strip()} {title}"
    return title


def catalogue_texts(items: pa.Table) -> list[str]:
    """``item_text`` of every row of an items table (brand optional), in table order."""
    titles = items.column("title").to_pylist()
    brands = items.column("brand").to_pylist() if "brand" in items.column_names else [None] * len(titles)
    return [item_text(title, brand) for title, brand in zip(titles, brands, strict=True)]
