"""KHQE benchmark: quantizer variants on one catalogue, side by side in one run, plus 1M-vector encode.

Variants: RQ-Kmeans vs RQ-OPQ, with and without keyword enhancement, balanced last level or not.
For each: fit time, encode throughput (items/s through the fitted quantizer), ICR of the raw
nearest codes and after collision resolution, CUR per level. Embeddings come from a run directory
written by `onesearch encode` (its embeddings/ cache), so every variant sees the same vectors.

    onesearch encode --data ../shared/data/homedepot --out runs/hd
    python bench/khqe_variants.py --run runs/hd --data ../shared/data/homedepot --out docs/bench_khqe.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.io import read_json, write_json  # noqa: E402
from onesearch_ray.khqe import (  # noqa: E402
    EncodedTexts,
    KeyphraseLexicon,
    KHQEConfig,
    QuantizerConfig,
    ResidualQuantizer,
    build_semantic_ids,
    catalogue_texts,
)


def run_variants(run: Path, data: Path, rq_layout: str, opq_suffix: str) -> list[dict]:
    track = load_track(data)
    items = track.items
    texts = catalogue_texts(items)
    item_vectors = np.load(run / "embeddings/items.npy")
    lexicon = KeyphraseLexicon.from_json(read_json(run / "lexicon.json"))
    phrase_vectors = np.load(run / "embeddings/phrases.npy")
    train_queries = None
    if track.queries is not None:
        splits = np.array(track.queries.column("split").to_pylist())
        query_texts = track.queries.column("query").to_pylist()
        query_vectors = np.load(run / "embeddings/queries.npy")
        train_queries = EncodedTexts(
            [q for q, s in zip(query_texts, splits, strict=True) if s == "train"],
            query_vectors[splits == "train"],
        )
    results = []
    for opq, keywords, balanced in itertools.product((False, True), (False, True), (False, True)):
        config = KHQEConfig(keyword_enhancement=keywords)
        config.quantizer.layout = rq_layout + (opq_suffix if opq else "")
        config.quantizer.balanced_last_level = balanced
        tokenizer, report = build_semantic_ids(
            items.column("item_id").to_numpy(),
            EncodedTexts(texts, item_vectors),
            train_queries,
            lexicon,
            phrase_vectors,
            config,
        )
        started = time.perf_counter()
        tokenizer.encode(item_vectors)
        encode_per_s = len(item_vectors) / (time.perf_counter() - started)
        row = {
            "quantizer": "RQ-OPQ" if opq else "RQ-Kmeans",
            "layout": report["layout"],
            "keywords": keywords,
            "balanced_last": balanced,
            "fit_s": report["fit_seconds"],
            "encode_items_per_s": encode_per_s,
            "icr_raw": report["icr_raw"],
            "icr": report["icr"],
            "max_items_per_sid_raw": report["items_per_sid_raw"]["max"],
            "cur": {k: v for k, v in report["cur"].items() if "level" in k},
        }
        print(json.dumps(row), flush=True)
        results.append(row)
    return results


def encode_throughput(n_vectors: int, dim: int, layout: str, fit_sample: int, chunk: int) -> dict:
    """Fit on a sample of clustered synthetic vectors, then encode n_vectors in chunks."""
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((2048, dim)).astype(np.float32)

    def sample(n: int) -> np.ndarray:
        v = centers[rng.integers(0, len(centers), n)] + 0.5 * rng.standard_normal((n, dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    started = time.perf_counter()
    quantizer = ResidualQuantizer.fit(sample(fit_sample), QuantizerConfig(layout=layout))
    fit_s = time.perf_counter() - started
    encode_s = 0.0
    for start in range(0, n_vectors, chunk):
        batch = sample(min(chunk, n_vectors - start))
        started = time.perf_counter()
        quantizer.encode(batch)
        encode_s += time.perf_counter() - started
    return {
        "n_vectors": n_vectors,
        "dim": dim,
        "layout": str(quantizer.layout),
        "fit_sample": fit_sample,
        "fit_s": fit_s,
        "encode_s": encode_s,
        "vectors_per_s": n_vectors / encode_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="run directory from `onesearch encode`")
    parser.add_argument("--data", type=Path, required=True, help="the track directory that run encoded")
    parser.add_argument("--rq-layout", default="4096-1024-512")
    parser.add_argument("--opq", default="+opq2x256")
    parser.add_argument("--million", type=int, default=1_000_000, help="vectors for the encode benchmark")
    parser.add_argument("--out", type=Path, default=Path("docs/bench_khqe.json"))
    args = parser.parse_args()
    variants = run_variants(args.run, args.data, args.rq_layout, args.opq)
    throughput = encode_throughput(args.million, 384, args.rq_layout + args.opq, 100_000, 100_000)
    print(json.dumps(throughput), flush=True)
    write_json(args.out, {"variants": variants, "encode_1m": throughput})


if __name__ == "__main__":
    main()
