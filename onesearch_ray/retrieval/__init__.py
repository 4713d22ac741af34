"""Retrievers that stand beside the generator: BM25, dense (faiss), RRF, and the next-item baselines.

They are the baselines of ``docs/evaluation.md`` and, as plain retrievers, the cascade the simulator
and the distillation use and the service's fallback. BM25 is the catalogue's own
(``catalogue.lexical.LexicalIndex``): the model and its baseline score words the same way.
"""

from onesearch_ray.retrieval.baselines import (
    BM25Retriever,
    CooccurrenceBaseline,
    DenseHistoryBaseline,
    DenseRetriever,
    PopularityBaseline,
    normalise_rows,
    rrf_fuse,
)
from onesearch_ray.retrieval.tracks import (
    next_item_eval_inputs,
    run_next_item_baselines,
    run_search_baselines,
    search_eval_inputs,
)

__all__ = [
    "BM25Retriever",
    "CooccurrenceBaseline",
    "DenseHistoryBaseline",
    "DenseRetriever",
    "PopularityBaseline",
    "next_item_eval_inputs",
    "normalise_rows",
    "rrf_fuse",
    "run_next_item_baselines",
    "run_search_baselines",
    "search_eval_inputs",
]
