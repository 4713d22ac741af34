"""Baselines of docs/evaluation.md on the real tracks' test split, printed as tables.

Home Depot: BM25 (the catalogue's own, `text.tokenize` tokens), dense all-MiniLM-L6-v2 + faiss flat IP, and
their RRF (k=60, depth 1000). Amazon Industrial: popularity, item co-occurrence (last 3 history
items) and dense mean-of-last-3-history-titles, all fit on the valid rows only.

Cached embeddings (one row per products.parquet / queries.parquet / items.parquet row, file order)
are reused when given; anything missing is encoded with the packaged MiniLM unless --no-encode
(the 54,667 Home Depot titles take ~8 minutes on 2 cores; queries and the Amazon titles < 1 minute).

    python bench/eval_baselines.py --data-homedepot ../shared/data/homedepot \\
        --item-vectors runs/hd/embeddings/items.npy --query-vectors runs/hd/embeddings/queries.npy \\
        --data-amazon ../shared/data/amazon18_industrial --out runs/eval_baselines
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.eval import (  # noqa: E402
    NEXT_ITEM_TABLE_METRICS,
    SEARCH_TABLE_METRICS,
    format_table,
    plot_results,
    write_eval_json,
)
from onesearch_ray.khqe.config import EncoderConfig
from onesearch_ray.khqe.encoder import SentenceTransformerEncoder, TextEncoder  # noqa: E402
from onesearch_ray.retrieval import run_next_item_baselines, run_search_baselines  # noqa: E402


def _load(path: Path | None) -> np.ndarray | None:
    return None if path is None else np.load(path)


def _report(name: str, results: dict, metrics: tuple[str, ...], out: Path | None, elapsed: float) -> None:
    print(f"\n{name} ({elapsed:.0f} s)\n{format_table(results, metrics)}")
    if out is not None:
        write_eval_json(out / f"{name}.json", results)
        plot_results(results, out / f"{name}.png", title=name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-homedepot", type=Path, help="Home Depot track directory")
    parser.add_argument("--data-amazon", type=Path, help="Amazon 2018 Industrial track directory")
    parser.add_argument("--item-vectors", type=Path, help="Home Depot title embeddings (.npy)")
    parser.add_argument("--query-vectors", type=Path, help="Home Depot query embeddings (.npy), all splits")
    parser.add_argument("--amazon-item-vectors", type=Path, help="Amazon title embeddings (.npy)")
    parser.add_argument("--split", default="test", help="split to report on (default: test)")
    parser.add_argument("--no-encode", action="store_true", help="never run the encoder: dense needs vectors")
    parser.add_argument("--out", type=Path, help="directory for <track>.json and <track>.png")
    args = parser.parse_args(argv)
    if args.data_homedepot is None and args.data_amazon is None:
        parser.error("give --data-homedepot and/or --data-amazon")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    encoder: TextEncoder | None = None if args.no_encode else SentenceTransformerEncoder(EncoderConfig())

    if args.data_homedepot is not None:
        start = time.perf_counter()
        results = run_search_baselines(
            load_track(args.data_homedepot),
            args.split,
            item_vectors=_load(args.item_vectors),
            query_vectors=_load(args.query_vectors),
            encoder=encoder,
        )
        metrics = (*SEARCH_TABLE_METRICS, "ms_per_query")
        _report("homedepot", results, metrics, args.out, time.perf_counter() - start)
    if args.data_amazon is not None:
        start = time.perf_counter()
        results = run_next_item_baselines(
            load_track(args.data_amazon),
            args.split,
            item_vectors=_load(args.amazon_item_vectors),
            encoder=encoder,
        )
        _report(
            "amazon18_industrial", results, NEXT_ITEM_TABLE_METRICS, args.out, time.perf_counter() - start
        )


if __name__ == "__main__":
    main()
