"""Evaluation: metrics, baselines and reports exactly as ``docs/evaluation.md`` defines them.

Pure Python (numpy, bm25s, faiss); the pipelines wrap these functions.
"""

from onesearch_ray.eval.baselines import (
    BM25Retriever,
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    DenseRetriever,
    PopularityBaseline,
    normalise_rows,
    rrf_fuse,
)
from onesearch_ray.eval.metrics import (
    NEXT_ITEM_KS,
    RELEVANT_THRESHOLD,
    SEARCH_KS,
    dedup,
    ndcg_at_k,
    next_item_metrics,
    search_metrics,
)
from onesearch_ray.eval.report import (
    NEXT_ITEM_TABLE_METRICS,
    SEARCH_TABLE_METRICS,
    format_table,
    plot_results,
    write_eval_json,
)
from onesearch_ray.eval.tracks import (
    next_item_eval_inputs,
    run_next_item_baselines,
    run_search_baselines,
    search_eval_inputs,
)

__all__ = [
    "NEXT_ITEM_KS",
    "NEXT_ITEM_TABLE_METRICS",
    "RELEVANT_THRESHOLD",
    "SEARCH_KS",
    "SEARCH_TABLE_METRICS",
    "BM25Retriever",
    "CooccurrenceBaseline",
    "DenseHistoryBaseline",
    "DenseRetriever",
    "PopularityBaseline",
    "dedup",
    "format_table",
    "ndcg_at_k",
    "next_item_eval_inputs",
    "next_item_metrics",
    "normalise_rows",
    "plot_results",
    "rrf_fuse",
    "run_next_item_baselines",
    "run_search_baselines",
    "search_eval_inputs",
    "search_metrics",
    "write_eval_json",
]
