"""The trained generator's two engines side by side on a search track: torch (reference) and vLLM.

Both run the same planning and item step (``generator.search``); they differ in who runs the
decoder: the model's own torch forward, or vLLM with prompt embeddings (``generator.vllm_decoder``).
Each round scores the split's queries with both engines and RRF (BM25 + dense, the cascade's
first stage), in alternating order; ms/query is the median of ``--rounds`` rounds (min and max beside
it). It also reports how often the two engines return the same top-10 and the same top-``k`` set.

    python bench/generator_engines.py --run runs/hd --data ../shared/data/homedepot --split test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.generator.catalogue import load_catalogue  # noqa: E402
from onesearch_ray.generator.evaluate import judged_split, rank  # noqa: E402
from onesearch_ray.generator.job import MODEL_DIR  # noqa: E402
from onesearch_ray.generator.search import TorchDecoder  # noqa: E402
from onesearch_ray.generator.store import load_generator  # noqa: E402
from onesearch_ray.generator.vllm_decoder import VLLMDecoder  # noqa: E402
from onesearch_ray.io import write_json  # noqa: E402
from onesearch_ray.metrics import search_metrics  # noqa: E402
from onesearch_ray.retrieval.tracks import run_search_baselines  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, required=True, help="encoded run with a trained RUN/generator")
    parser.add_argument("--data", type=Path, required=True, help="the track directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=350)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)

    track = load_track(args.data)
    catalogue = load_catalogue(args.run, track)
    model, _ = load_generator(args.run / MODEL_DIR)
    query_ids, queries, vectors, judgments = judged_split(catalogue, track, args.split)
    started = time.perf_counter()
    engines = {"torch": TorchDecoder(model), "vllm": VLLMDecoder.start(model)}
    print(f"vLLM engine started in {time.perf_counter() - started:.1f} s")

    ms: dict[str, list[float]] = {"torch": [], "vllm": [], "rrf": []}
    rankings: dict[str, list[list[int]]] = {}
    for round_ in range(args.rounds):
        order = ["torch", "vllm"] if round_ % 2 == 0 else ["vllm", "torch"]
        for name in order:
            started = time.perf_counter()
            rankings[name] = rank(model, queries, vectors, args.k, decoder=engines[name])
            ms[name].append(1000 * (time.perf_counter() - started) / len(queries))
        baselines = run_search_baselines(
            track, args.split, catalogue.item_vectors, catalogue.query_vectors, k=args.k
        )
        ms["rrf"].append(baselines["rrf"]["ms_per_query"])

    results = {}
    for name in ("torch", "vllm"):
        ranked = {
            qid: catalogue.item_ids[r].tolist() for qid, r in zip(query_ids, rankings[name], strict=True)
        }
        results[name] = search_metrics(ranked, judgments)
    results["rrf"] = baselines["rrf"]
    same_top10 = np.mean([a[:10] == b[:10] for a, b in zip(rankings["torch"], rankings["vllm"], strict=True)])
    same_set = np.mean([set(a) == set(b) for a, b in zip(rankings["torch"], rankings["vllm"], strict=True)])
    print(f"\n{track.name} {args.split}: {len(queries)} queries, k={args.k}, {args.rounds} rounds")
    print("| engine | NDCG@10 | HR@350 | ms/query median | min | max |")
    print("|---|---|---|---|---|---|")
    for name in ("torch", "vllm", "rrf"):
        times = ms[name]
        print(
            f"| {name} | {results[name]['NDCG@10']:.4f} | {results[name]['HR@350']:.4f} | "
            f"{statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} |"
        )
    print(f"same top-10 (order included): {same_top10:.4f}; same top-{args.k} set: {same_set:.4f}")
    if args.out:
        write_json(
            args.out, {"metrics": results, "ms_per_query": ms, "same_top10": same_top10, "same_set": same_set}
        )
    print(json.dumps({name: round(statistics.median(t), 3) for name, t in ms.items()}))


if __name__ == "__main__":
    main()
