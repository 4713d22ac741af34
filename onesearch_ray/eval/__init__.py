"""Evaluation of a trained run exactly as ``docs/evaluation.md`` defines it: the run's model beside
the baselines (``onesearch_ray.retrieval``) on a track's split, scored with ``onesearch_ray.metrics``,
the cold-start report, and the tables and plots. It scores the generator as served
(``generator.served``), below the service, and nothing in the library imports it.
"""

from onesearch_ray.eval.report import (
    NEXT_ITEM_TABLE_METRICS,
    SEARCH_TABLE_METRICS,
    format_table,
    plot_results,
    write_eval_json,
)

__all__ = [
    "NEXT_ITEM_TABLE_METRICS",
    "SEARCH_TABLE_METRICS",
    "format_table",
    "plot_results",
    "write_eval_json",
]
