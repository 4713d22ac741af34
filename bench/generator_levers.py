"""The CPU-first generator on a search track, one row per lever added in turn, beside the baselines.

Rows (same queries, whole catalogue, docs/evaluation.md metrics):

    bm25, dense, rrf             the baselines (``onesearch_ray.retrieval.tracks``), with their ms/query
    codes + dense item step      untrained: code beam over <query, centroid>, items by <query, item vector>
    + lexical item term          untrained: + the model's term weights (IDF) x saturated term frequency
    + lexical planning           untrained: prefixes also ranked by their best item's lexical score (PAG)
    + trained                    RUN/generator, trained by ``python -m pipelines.generator``

    python bench/generator_levers.py --run runs/hd --data ../shared/data/homedepot --splits valid test

``--e5-run RUN`` adds dense e5 and RRF (BM25 + e5) from another run's cached vectors.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.eval import SEARCH_TABLE_METRICS, format_table  # noqa: E402
from onesearch_ray.generator.catalogue import build_generator, load_catalogue  # noqa: E402
from onesearch_ray.generator.config import SearchConfig  # noqa: E402
from onesearch_ray.generator.evaluate import search_split  # noqa: E402
from onesearch_ray.generator.job import MODEL_DIR  # noqa: E402
from onesearch_ray.generator.store import load_generator  # noqa: E402
from onesearch_ray.io import read_json, write_json  # noqa: E402
from onesearch_ray.retrieval.tracks import DenseInputs, run_search_baselines  # noqa: E402


def lever_rows(run: Path, track, split: str, k: int) -> dict[str, dict]:
    catalogue = load_catalogue(run, track)
    trained, _ = load_generator(run / MODEL_DIR)
    search = trained.config.search
    untrained = build_generator(catalogue, trained.config, lexical=trained.lexical)
    no_plan = SearchConfig(search.beams, plan_weight=0.0, code_weight=search.code_weight)
    rows = {"+ lexical item term": search_split(untrained, catalogue, track, split, k, no_plan)}
    rows["+ lexical planning"] = search_split(untrained, catalogue, track, split, k, search)
    rows["+ trained"] = search_split(trained, catalogue, track, split, k, search)
    with torch.no_grad():
        untrained.log_lexical_scale.fill_(float("-inf"))  # the lexical term off
    rows = {"codes + dense item step": search_split(untrained, catalogue, track, split, k, no_plan)} | rows
    history = read_json(run / MODEL_DIR / "history.json")
    rows["+ trained"]["train_minutes"] = history["minutes"]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="encoded run with a trained RUN/generator")
    parser.add_argument("--data", type=Path, required=True, help="the track directory")
    parser.add_argument("--splits", nargs="+", default=["valid", "test"])
    parser.add_argument("--e5-run", type=Path, help="a run encoded with e5 (dense e5 and RRF rows)")
    parser.add_argument("--k", type=int, default=350)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    track = load_track(args.data)
    catalogue = load_catalogue(args.run, track)
    variants = {}
    if args.e5_run:
        e5 = load_catalogue(args.e5_run, track)
        variants["e5"] = DenseInputs(e5.item_vectors, e5.query_vectors)
    results = {}
    for split in args.splits:
        table = run_search_baselines(
            track, split, catalogue.item_vectors, catalogue.query_vectors, k=args.k, dense_variants=variants
        )
        table |= lever_rows(args.run, track, split, args.k)
        metrics = (*SEARCH_TABLE_METRICS, "ms_per_query", "train_minutes")
        print(
            f"\n{track.name} {split} ({table['bm25']['n_queries']} queries)\n{format_table(table, metrics)}"
        )
        results[split] = table
    if args.out:
        write_json(args.out, results)
    print(json.dumps({s: {r: round(m["NDCG@10"], 4) for r, m in t.items()} for s, t in results.items()}))


if __name__ == "__main__":
    main()
