"""What a sweep leaves behind: the results table (CSV, JSON, markdown) and the best layout as a
config file whose ``khqe:`` section ``onesearch encode --config`` reads (and whose ``generator:``
section, decoding that layout's levels, ``onesearch generator --config`` reads). No Ray here."""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import math
import numbers
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from onesearch_ray.io import atomic_path, write_json
from onesearch_ray.khqe.config import KHQEConfig
from onesearch_ray.khqe.layout import CodebookLayout

if TYPE_CHECKING:
    from onesearch_ray.generator.config import GeneratorJobConfig

# columns of the markdown table, in this order, when some row has them
MARKDOWN_COLUMNS = (
    "layout", "keywords", "encoder", "icr", "cur_level_1", "same_1", "same_2", "in_top_10", "in_top_50",
    "reach_350", "code_levels", "beams", "NDCG@10", "HR@10", "HR@50", "HR@350", "MRR@10", "point",
    "points", "stopped", "generator_minutes",
)  # fmt: skip


def trial_khqe_config(base: KHQEConfig, trial: Mapping) -> KHQEConfig:
    """``base`` with the trial's layout, keyword switch and encoder."""
    config = copy.deepcopy(base)
    config.quantizer.layout = str(CodebookLayout.parse(trial["layout"]))
    config.keyword_enhancement = bool(trial["keywords"])
    config.encoder.model = str(trial["encoder"])
    return config


def ranked(rows: Sequence[Mapping], metric: str) -> list[Mapping]:
    """The rows that report ``metric``, best (highest) first; on a tie, a trial trained to the end
    before one ASHA stopped (its score is a full run's, not an early point's)."""
    scored = [row for row in rows if _score(row.get(metric)) is not None]
    return sorted(scored, key=lambda row: (-_score(row[metric]), bool(row.get("stopped"))))


def best_row(rows: Sequence[Mapping], metric: str) -> Mapping:
    found = ranked(rows, metric)
    if not found:
        raise ValueError(f"no trial reported {metric!r}; see the Ray Tune logs under the output directory")
    return found[0]


def write_results(out: Path, rows: Sequence[Mapping], metric: str, title: str) -> dict[str, Path]:
    """``results.csv``, ``results.json`` and ``results.md``, rows best first by ``metric`` (rows
    without it, such as failed trials, last)."""
    ordered = ranked(rows, metric)
    ordered += [row for row in rows if _score(row.get(metric)) is None]
    columns = list(dict.fromkeys(key for row in ordered for key in row))
    paths = {"csv": out / "results.csv", "json": out / "results.json", "markdown": out / "results.md"}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(ordered)
    with atomic_path(paths["csv"]) as tmp:
        tmp.write_text(buffer.getvalue())
    write_json(paths["json"], {"metric": metric, "trials": list(ordered)})
    with atomic_path(paths["markdown"]) as tmp:
        tmp.write_text(f"{title}\n\n{markdown_table(ordered)}\n")
    return paths


def markdown_table(rows: Sequence[Mapping]) -> str:
    columns = [c for c in MARKDOWN_COLUMNS if any(c in row for row in rows)]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_best_config(
    path: Path, base: KHQEConfig, best: Mapping, comment: str, generator: GeneratorJobConfig | None = None
) -> Path:
    """The best trial as a YAML config: a ``khqe:`` section (``onesearch encode --config``) and, when
    given, the ``generator:`` section to train on it (``onesearch generator --config``)."""
    sections = {"khqe": trial_khqe_config(base, best).to_dict()}
    if generator is not None:
        sections["generator"] = _yaml_plain(dataclasses.asdict(generator))
    text = "".join(f"# {line}\n" for line in comment.splitlines())
    text += yaml.safe_dump(sections, sort_keys=False)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def _yaml_plain(value):
    """``value`` with tuples as lists (``yaml.safe_dump`` writes no tuples)."""
    if isinstance(value, dict):
        return {key: _yaml_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_yaml_plain(item) for item in value]
    return value


def _score(value) -> float | None:
    """A metric value as a number; None when missing, not numeric or NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(value):
        return None
    return float(value)


def _cell(value) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool | numbers.Integral):
        return str(value)
    if isinstance(value, numbers.Real):
        return f"{value:.3f}"
    return str(value)
