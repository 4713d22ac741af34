"""Present evaluation results: a text table, a grouped bar chart, and the eval JSON artifact.

``results`` is always ``{system: {metric: value}}``, e.g. ``{"model": {...}, "bm25": {...}}``.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from onesearch_ray.io import write_json

Results = Mapping[str, Mapping[str, float]]

SEARCH_TABLE_METRICS = (
    "HR@10", "HR@50", "HR@350", "Recall@350", "MRR@10", "NDCG@10", "judged@10", "n_queries",
)  # fmt: skip
NEXT_ITEM_TABLE_METRICS = ("HR@5", "NDCG@5", "HR@10", "NDCG@10", "n_rows")
PLOT_METRICS = ("HR@5", "NDCG@5", "HR@10", "HR@50", "HR@350", "Recall@350", "MRR@10", "NDCG@10")


def _cell(value: float | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, numbers.Integral):  # counts such as n_queries
        return str(value)
    return f"{value:.4f}"


def format_table(results: Results, metric_names: Sequence[str]) -> str:
    """Plain aligned table: one row per system, one column per metric ("-" where missing)."""
    header = ["system", *metric_names]
    rows = [[system, *(_cell(metrics.get(m)) for m in metric_names)] for system, metrics in results.items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def markdown_table(results: Results, metric_names: Sequence[str]) -> str:
    """The same rows as :func:`format_table`, as a Markdown table (for docs/benchmarks.md)."""
    lines = [
        "| system | " + " | ".join(metric_names) + " |",
        "|---|" + "---|" * len(metric_names),
    ]
    for system, metrics in results.items():
        lines.append(f"| {system} | " + " | ".join(_cell(metrics.get(m)) for m in metric_names) + " |")
    return "\n".join(lines)


def plot_results(
    results: Results, path: str | os.PathLike, metric_names: Sequence[str] | None = None, title: str = ""
) -> Path:
    """Grouped bar chart (metrics on x, one bar per system) saved as PNG; returns the path.

    Default metrics: those of ``PLOT_METRICS`` that some system reports.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(metric_names or [m for m in PLOT_METRICS if any(m in r for r in results.values())])
    if not names:
        raise ValueError("no metric to plot")
    width = 0.8 / max(len(results), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) * max(1, len(results)) / 2), 4))
    x = np.arange(len(names))
    for i, (system, metrics) in enumerate(results.items()):
        values = [float(metrics.get(m, np.nan)) for m in names]
        ax.bar(x + (i - (len(results) - 1) / 2) * width, values, width, label=system)
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_eval_json(path: str | os.PathLike, results: Results) -> None:
    """Write ``{system: {metric: value}}`` (e.g. model, bm25, dense, rrf) atomically as JSON."""
    write_json(path, {system: dict(metrics) for system, metrics in results.items()})
