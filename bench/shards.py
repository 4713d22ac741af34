"""Shards rank as one catalogue: a trained run's generator over 1 and N shards, on the same queries.

In one process (the shards as ``catalogue.shards.LocalShard``: the same scoring code Ray Serve's shard
deployments run, without the transport), the run's model searches every judged test query over

- one catalogue holding every row (``generator.items.model_catalogue``), and
- a planner without dense rows plus N shards, each holding the rows ``shard_of`` gives it;

optionally after both grew by ``--added`` items (``bench/scale.py``'s near-duplicates and unrelated
items, sent as serving sends adds). Reports the share of queries whose top 10 is the same (ids, in
order), NDCG@10 / HR@350 of both, and the CPU ms per query of each (process CPU, shards included).

    python bench/shards.py --run runs/hd --data ../shared/data/homedepot --shards 2 \\
        --added 0 195333 --out docs/bench_shards.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.scale import K, _grow, _TestQueries  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument(
        "--added", type=int, nargs="+", default=[0], help="items added before each comparison"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    import torch

    from onesearch_ray.catalogue import NewItems
    from onesearch_ray.catalogue.shards import CatalogueShard, LocalShard, ShardScorer
    from onesearch_ray.generator.evaluate import rank
    from onesearch_ray.generator.items import model_catalogue
    from onesearch_ray.generator.store import load_generator
    from onesearch_ray.metrics import search_metrics
    from onesearch_ray.runs import model_name, served_model_dir

    torch.set_num_threads(2)
    test = _TestQueries(args.run, args.data)
    base = test.base
    model_dir = served_model_dir(args.run)
    name = model_name(args.run, model_dir)
    model, item_ids = load_generator(model_dir)
    rows = {int(i): r for r, i in enumerate(base.item_ids)}
    codes = base.codes[[rows[int(i)] for i in item_ids]]
    titles = [base.titles[rows[int(i)]] for i in item_ids]
    sizes = base.sids.layout.level_sizes

    def catalogue(**role):
        return model_catalogue(model, item_ids, codes, sizes, titles, name=name, **role)

    def shard(index: int) -> CatalogueShard:
        load = lambda model_name: catalogue(shard=(index, args.shards))  # noqa: E731 - one model here
        return CatalogueShard(load(name), load)

    single = catalogue()
    scorer = ShardScorer([LocalShard(shard(i)) for i in range(args.shards)])
    planner = catalogue(scorer=scorer)
    results, added = [], 0
    grown = _grow(base, args.run, max(args.added), 0.5)  # each step adds the next slice of these
    for target in sorted(args.added):
        fresh = slice(added, target)
        if target > added:
            items = NewItems(
                grown["item_ids"][fresh],
                grown["titles"][fresh],
                grown["vectors"][fresh],
                grown["codes"][fresh],
            )
            single.add(items)
            scorer.add(items, planner.snapshot.records + 1)
            planner.add(items)
            added = target
        test.inherit({key: value[:target] for key, value in grown.items()})
        entry: dict = {"items": single.snapshot.n_items, "shards": args.shards}
        rankings = {}
        for label, snapshot in (("one", single.snapshot), ("sharded", planner.snapshot)):
            started = time.process_time()
            rankings[label] = rank(model, test.texts, test.vectors, K, items=snapshot)
            cpu_ms = 1000 * (time.process_time() - started) / len(test.texts)
            metrics = search_metrics(dict(zip(test.query_ids, rankings[label], strict=True)), test.judgments)
            entry[label] = {"cpu_ms": cpu_ms, "ndcg10": metrics["NDCG@10"], "hr350": metrics["HR@350"]}
        same = [a[:10] == b[:10] for a, b in zip(rankings["one"], rankings["sharded"], strict=True)]
        entry["same_top10"] = float(np.mean(same))
        entry["queries"] = len(same)
        print(json.dumps(entry, indent=1), flush=True)
        results.append(entry)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "results": results}, indent=1))


if __name__ == "__main__":
    main()
