"""Cold-start items, as ``docs/evaluation.md`` ("Cold-start items") defines them.

Held-out items (5% of the catalogue, by a hash of the item id) are left out of KHQE fitting and so
of every training stage (``onesearch encode --holdout-cold`` records them in ``RUN/holdout.json``).
The evaluation adds them to the served generator's live catalogue with the frozen codebooks, as
``POST /items`` does (``generator.served``), then measures over them: the item for its own title as the query
(HR@10, HR@350), and the test queries that judge a held-out item relevant, counting only held-out
items as relevant. BM25 and dense index the new items like any other.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from onesearch_ray.catalogue import Snapshot
from onesearch_ray.data import Track
from onesearch_ray.eval.baselines import search_baselines
from onesearch_ray.eval.config import ColdStartConfig, EvalConfig
from onesearch_ray.eval.report import SEARCH_TABLE_METRICS, markdown_table
from onesearch_ray.generator.served import Ask, ServedGenerator
from onesearch_ray.io import atomic_path, write_json
from onesearch_ray.metrics import SEARCH_KS, relevant_items, search_metrics
from onesearch_ray.retrieval.tracks import search_eval_inputs
from onesearch_ray.runs import model_name
from onesearch_ray.text import MAX_QUERY_CHARS

log = logging.getLogger(__name__)

TASKS = {
    "own_title": "each held-out item's own title as the query",
    "test_queries": "test queries judging a held-out item relevant (only held-out items count)",
}
OWN_TITLE_METRICS = ("HR@10", "HR@350", "MRR@10", "n_queries", "ms_per_query")


def own_title_track(track: Track, held_out: Sequence[int]) -> Track:
    """Each held-out item's title as a ``test`` query (query id = item id), relevant to that item only."""
    items = track.items.filter(pc.is_in(track.items["item_id"], value_set=pa.array(held_out, pa.int64())))
    ids = items["item_id"].to_pylist()
    ids_column = pa.array(ids, pa.int64())
    queries = pa.table(
        {
            "query_id": ids_column,
            "query": [title[:MAX_QUERY_CHARS] for title in items["title"].to_pylist()],
            "split": ["test"] * len(ids),
        }
    )
    judgments = pa.table({"query_id": ids_column, "item_id": ids_column, "relevance": [3.0] * len(ids)})
    return dataclasses.replace(track, queries=queries, judgments=judgments)


def held_out_judgments_track(track: Track, held_out: Sequence[int]) -> Track:
    """The track with only the judgments of held-out items: only they can be relevant (or judged)."""
    if track.judgments is None:
        raise ValueError(f"track {track.name!r} has no judgments (not a search track)")
    keep = pc.is_in(track.judgments["item_id"], value_set=pa.array(held_out, pa.int64()))
    return dataclasses.replace(track, judgments=track.judgments.filter(keep))


def served_rankings(
    served: ServedGenerator,
    items: Snapshot,
    queries: Sequence[tuple[int, str]],
    beam: int | None,
    k: int,
    batch: int = 8,
) -> dict[int, list[int]]:
    """The item ids the served generator returns from ``items`` for each (query id, text), as an
    anonymous user."""
    rankings: dict[int, list[int]] = {}
    for start in range(0, len(queries), batch):
        chunk = queries[start : start + batch]
        ranked = served.rank([Ask(text, (), k, beam) for _, text in chunk], items)
        for (qid, _), ranking in zip(chunk, ranked, strict=True):
            rankings[qid] = [item for item, _ in ranking]
        if start // batch % 50 == 0:
            log.info("searched %d / %d queries", start + len(chunk), len(queries))
    return rankings


def cold_start_report(
    served: ServedGenerator,
    items: Snapshot,
    run: str | Path,
    track: Track,
    held_out: Sequence[int],
    config: ColdStartConfig,
    add_seconds: float,
) -> dict:
    """Score the served generator on the ``items`` snapshot its run's ``held_out`` items joined
    (``generator.served.join_held_out``, in ``add_seconds``), and the baselines, on both tasks of
    :data:`TASKS`: ``{task: {system: metrics}}``, beside ``served_model`` (its name in the run) and
    ``held_out`` (how many were added, in how long).

    ``own_title`` also has ``model_trained``: the model for the titles of as many TRAINED items
    (an even sample of the catalogue), the reference a held-out item's figure compares with.
    """
    if not held_out:
        raise FileNotFoundError(f"{run} holds no item out: encode it with --holdout-cold")
    trained = [i for i in track.items["item_id"].to_pylist() if served.run_items.sids.has_item(i)]
    trained = trained[:: max(1, len(trained) // len(held_out))][: len(held_out)]
    tasks = {
        "own_title": own_title_track(track, held_out),
        "test_queries": held_out_judgments_track(track, held_out),
    }
    report: dict = {
        "served_model": model_name(run, served.directory),
        "held_out": {"n_items": len(held_out), "add_seconds": add_seconds},
    }
    for task, task_track in tasks.items():
        model, kept_ids = _model_metrics(served, items, task_track, config)
        eval_config = EvalConfig(split="test", k=config.k, e5=config.e5)
        report[task] = {"model": model} | search_baselines(Path(run), task_track, eval_config, kept_ids)
    report["own_title"]["model_trained"], _ = _model_metrics(
        served, items, own_title_track(track, trained), config
    )
    return report


def _model_metrics(
    served: ServedGenerator, items: Snapshot, task_track: Track, config: ColdStartConfig
) -> tuple[dict[str, float], set[int] | None]:
    """The model's metrics on the task's test queries that have a relevant item (the first
    ``config.limit`` of them), and the ids of those queries when a limit applies."""
    query_ids, texts, judgments = search_eval_inputs(task_track, "test")
    relevant = [(q, t) for q, t in zip(query_ids, texts, strict=True) if relevant_items(judgments[q])]
    kept = relevant[: config.limit] if config.limit else relevant
    started = time.perf_counter()
    rankings = served_rankings(served, items, kept, config.beam, config.k)
    ks = (*(cut for cut in SEARCH_KS if cut < config.k), config.k)
    metrics = search_metrics(rankings, judgments, ks) | {
        "n_skipped": len(query_ids) - len(relevant),
        "beam": served.beam_of(config.beam),
        "ms_per_query": 1000 * (time.perf_counter() - started) / max(1, len(kept)),
    }
    return metrics, ({q for q, _ in kept} if config.limit else None)


def cold_start_markdown(run: str | Path, report: dict, config: ColdStartConfig) -> str:
    """The report of :func:`cold_start_report` as Markdown: one table per task."""
    held = report["held_out"]
    lines = [
        f"## Cold-start items: {run}",
        "",
        f"{held['n_items']} held-out items added live in {held['add_seconds']:.1f} s; "
        f"model {report['served_model']}, beam {report['own_title']['model']['beam']}, k {config.k}"
        + (f", first {config.limit} queries" if config.limit else ""),
    ]
    for task, what in TASKS.items():
        metrics = OWN_TITLE_METRICS if task == "own_title" else (*SEARCH_TABLE_METRICS, "ms_per_query")
        lines += ["", f"### {task}: {what}", "", markdown_table(report[task], metrics)]
    return "\n".join(lines) + "\n"


def write_cold_start(run: Path, report: dict, config: ColdStartConfig, out: Path | None = None) -> None:
    """``cold_start.json`` and ``cold_start.md`` (printed too) in ``out`` (default: the run), each
    written atomically."""
    out = out or run
    write_json(out / "cold_start.json", report)
    markdown = cold_start_markdown(run, report, config)
    with atomic_path(out / "cold_start.md") as tmp:
        tmp.write_text(markdown)
    print(markdown)
