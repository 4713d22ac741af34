"""Search cost and quality as the catalogue grows: the generator against a cascade stand-in.

A trained Home Depot run's catalogue is grown to each size with two kinds of added items (seeded,
the same for both systems):

- near-duplicate listings (``--near-share`` of them): a real item's vector with a small perturbation
  and its title reworded; they inherit the item's judgments (another seller's copy) and its SID;
- unrelated items: a vector mixed from two random items plus noise, a title of words drawn from
  the catalogue's vocabulary; never relevant; coded by the frozen codebooks (RQ + OPQ encode).

At each size each system runs in its own process (its memory is its own): the generator (the run's
model over the live catalogue, as ``onesearch serve`` holds it: ``generator.items.model_catalogue``
plus ``LiveCatalogue.add``; its own ``search``, query vectors cached) and the stand-in (the BM25
baseline, ``retrieval.BM25Retriever``; figures before 2026-12-07 used bm25s's index) + faiss
IndexIVFFlat over the vectors, nprobe ``--nprobe``, fused by RRF).
Both answer the same test queries; CPU ms per query is the median over ``--rounds`` alternating
rounds of ``--timed`` queries (process CPU time, all threads), NDCG@10 and HR@350 over every judged
test query, and RSS after the build (GiB; the peak too).

    python bench/scale.py --run runs/hd --data ../shared/data/homedepot \\
        --sizes 54667 250000 1000000 --out docs/bench_scale.json

Writes ``{"sizes": [{"items", "generator": {...}, "cascade": {...}}, ...]}`` and a PNG beside it.
"""

from __future__ import annotations

import argparse
import gc
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

K = 350
RRF_K = 60
SEED = 20261206


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--sizes", type=int, nargs="+", default=[54667, 250_000, 1_000_000])
    parser.add_argument("--near-share", type=float, default=0.5)
    parser.add_argument("--timed", type=int, default=400, help="queries per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument(
        "--vector-dtype", default=None, help="the generator's dense rows (default: its config)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    context = mp.get_context("spawn")
    results = []
    for size in args.sizes:
        print(f"--- {size:,} items", flush=True)
        workers = {name: _Worker(context, name, args, size) for name in ("generator", "cascade")}
        for worker in workers.values():
            worker.wait_ready()  # built one after the other: two builds at once would share 2 cores
        cpu: dict[str, list[float]] = {name: [] for name in workers}
        for round_ in range(args.rounds):
            order = list(workers) if round_ % 2 == 0 else list(reversed(workers))
            for name in order:
                cpu[name].append(workers[name].call("time"))
        entry: dict = {"items": 0}
        for name, worker in workers.items():
            quality = worker.call("quality")
            entry["items"] = quality.pop("items")
            entry[name] = {"cpu_ms": statistics.median(cpu[name]), "cpu_ms_rounds": cpu[name], **quality}
            worker.close()
        print(json.dumps(entry, indent=1), flush=True)
        results.append(entry)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": _args(args), "sizes": results}, indent=1))
    _plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


class _Worker:
    """One system in its own process, driven by commands over a pipe."""

    def __init__(self, context, name: str, args, size: int) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve_commands, args=(child, name, _args(args), size))
        self.process.start()

    def wait_ready(self) -> None:
        print(self.conn.recv(), flush=True)

    def call(self, command: str):
        self.conn.send(command)
        reply = self.conn.recv()
        if isinstance(reply, Exception):
            raise reply
        return reply

    def close(self) -> None:
        self.conn.send("stop")
        self.process.join()


def _args(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


# ---- the child process -----------------------------------------------------------------------
def _serve_commands(conn, name: str, args: dict, size: int) -> None:
    started = time.perf_counter()
    test = _TestQueries(Path(args["run"]), Path(args["data"]))
    system = (_Generator if name == "generator" else _Cascade)(Path(args["run"]), test.base, args)
    grown = _grow(test.base, Path(args["run"]), size - test.base.n, args["near_share"])
    system.add(grown)
    test.inherit(grown)
    del grown
    gc.collect()
    rss = _rss_gib()
    conn.send(f"{name}: {size:,} items built in {time.perf_counter() - started:.0f} s, RSS {rss:.2f} GiB")
    timed = slice(0, args["timed"])
    while True:
        command = conn.recv()
        if command == "stop":
            return
        try:
            if command == "time":
                cpu = time.process_time()
                system.rank(test.texts[timed], test.vectors[timed])
                conn.send(1000 * (time.process_time() - cpu) / len(test.texts[timed]))
            elif command == "quality":
                from onesearch_ray.metrics import search_metrics

                rankings = system.rank(test.texts, test.vectors)
                metrics = search_metrics(dict(zip(test.query_ids, rankings, strict=True)), test.judgments)
                conn.send(
                    {
                        "items": system.n_items,
                        "ndcg10": metrics["NDCG@10"],
                        "hr350": metrics["HR@350"],
                        "rss_gib": rss,
                        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                        **system.describe(),
                    }
                )
        except Exception as err:  # noqa: BLE001 - handed to the parent, which raises it
            conn.send(err)


class _Base:
    """The run's trained catalogue: ids, titles, raw vectors and full SIDs (track order)."""

    def __init__(self, run: Path, data: Path) -> None:
        from onesearch_ray.data import load_track
        from onesearch_ray.generator.catalogue import load_catalogue
        from onesearch_ray.khqe import SemanticIdTokenizer

        self.track = load_track(data)
        catalogue = load_catalogue(run, self.track)
        self.catalogue = catalogue
        self.item_ids, self.titles, self.vectors = (
            catalogue.item_ids,
            catalogue.titles,
            catalogue.item_vectors,
        )
        self.sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
        self.codes = np.asarray(self.sids.item_codes(self.item_ids.tolist()), np.int64)
        self.n = len(self.item_ids)


class _TestQueries:
    """Every judged test query: texts, cached vectors, judgments (extended to near-duplicates)."""

    def __init__(self, run: Path, data: Path) -> None:
        from onesearch_ray.generator.evaluate import judged_split

        self.base = _Base(run, data)
        self.query_ids, self.texts, self.vectors, self.judgments = judged_split(
            self.base.catalogue, self.base.track, "test"
        )

    def inherit(self, grown: dict) -> None:
        copies: dict[int, list[int]] = {}
        for new, source in zip(
            grown["item_ids"][grown["near"]], grown["sources"][grown["near"]], strict=True
        ):
            copies.setdefault(int(source), []).append(int(new))
        for judged in self.judgments.values():
            for item, relevance in list(judged.items()):
                for copy in copies.get(int(item), []):
                    judged[copy] = relevance


def _grow(base: _Base, run: Path, n: int, near_share: float) -> dict:
    """``n`` added items (seeded): near-duplicates of real items and unrelated ones (module docstring)."""
    rng = np.random.default_rng(SEED)
    n = max(0, n)
    near = rng.random(n) < near_share
    sources = rng.integers(0, base.n, n)
    dim = base.vectors.shape[1]
    vectors = np.empty((n, dim), np.float32)
    chunk = 100_000
    for start in range(0, n, chunk):
        end = min(n, start + chunk)
        block = base.vectors[sources[start:end]].copy()
        other = base.vectors[rng.integers(0, base.n, end - start)]
        unrelated = ~near[start:end]
        block[unrelated] += other[unrelated]
        scale = np.where(unrelated, 0.6, 0.15)[:, None] / np.sqrt(dim)
        block += rng.standard_normal(block.shape, dtype=np.float32) * scale.astype(np.float32)
        vectors[start:end] = block / np.linalg.norm(block, axis=1, keepdims=True)
    words = [w for title in base.titles[:20_000] for w in title.split()]
    titles = []
    for i in range(n):
        if near[i]:
            parts = base.titles[sources[i]].split()
            if len(parts) > 3 and rng.random() < 0.5:
                parts.pop(int(rng.integers(0, len(parts))))
            if len(parts) > 1 and rng.random() < 0.5:
                a, b = rng.integers(0, len(parts), 2)
                parts[a], parts[b] = parts[b], parts[a]
            titles.append(" ".join(parts) + (" - Value Pack" if rng.random() < 0.3 else ""))
        else:
            titles.append(" ".join(words[j] for j in rng.integers(0, len(words), int(rng.integers(3, 9)))))
    codes = np.empty((n, base.codes.shape[1]), np.int64)
    codes[near] = base.codes[sources[near]]
    for start in range(0, int((~near).sum()), chunk):
        rows = np.flatnonzero(~near)[start : start + chunk]
        codes[rows] = base.sids.encode(vectors[rows])
    return {
        "item_ids": np.arange(n, dtype=np.int64) + 10**9,
        "titles": titles,
        "vectors": vectors,
        "codes": codes,
        "near": near,
        "sources": base.item_ids[sources],
    }


class _Generator:
    """The run's generator over a live catalogue grown with the added items (as serving holds it)."""

    def __init__(self, run: Path, base: _Base, args: dict) -> None:
        import torch

        from onesearch_ray.generator.items import model_catalogue
        from onesearch_ray.generator.store import load_generator
        from onesearch_ray.runs import served_model_dir

        torch.set_num_threads(2)
        self.model, item_ids = load_generator(served_model_dir(run))
        rows = {int(i): r for r, i in enumerate(base.item_ids)}
        codes = base.codes[[rows[int(i)] for i in item_ids]]
        titles = [base.titles[rows[int(i)]] for i in item_ids]
        self.catalogue = model_catalogue(
            self.model, item_ids, codes, base.sids.layout.level_sizes, titles, args.get("vector_dtype")
        )

    def add(self, grown: dict) -> None:
        from onesearch_ray.catalogue import NewItems

        if len(grown["item_ids"]):
            self.catalogue.add(NewItems(grown["item_ids"], grown["titles"], grown["vectors"], grown["codes"]))
        self.items = self.catalogue.snapshot

    @property
    def n_items(self) -> int:
        return self.items.n_items

    def rank(self, texts, vectors) -> list[list[int]]:
        from onesearch_ray.generator.evaluate import rank

        return rank(self.model, texts, vectors, K, items=self.items)

    def describe(self) -> dict:
        config = self.model.config.search
        return {
            "catalogue_gib": self.items.nbytes / 2**30,
            "max_items": config.max_items,
            "beam": config.beams[-1],
            "index_levels": len(self.items.level_sizes),
            "vector_dtype": str(self.items.segments[0].vectors.dtype),
        }


class _Cascade:
    """BM25 (``retrieval.BM25Retriever``) + faiss IVF-Flat (inner product), fused by RRF, top 350."""

    def __init__(self, run: Path, base: _Base, args: dict) -> None:
        self.base, self.nprobe = base, args["nprobe"]

    def add(self, grown: dict) -> None:
        import faiss

        from onesearch_ray.retrieval.baselines import BM25Retriever

        ids = np.concatenate([self.base.item_ids, grown["item_ids"]])
        self.bm25 = BM25Retriever(list(self.base.titles) + grown["titles"], ids.tolist())
        vectors = (
            np.concatenate([self.base.vectors, grown["vectors"]])
            if len(grown["item_ids"])
            else self.base.vectors
        )
        self.nlist = int(4 * np.sqrt(len(ids)))
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        self.ivf = faiss.IndexIVFFlat(quantizer, vectors.shape[1], self.nlist, faiss.METRIC_INNER_PRODUCT)
        sample = vectors[
            np.random.default_rng(SEED).choice(
                len(vectors), min(len(vectors), 40 * self.nlist), replace=False
            )
        ]
        self.ivf.train(sample)
        self.ivf.add(vectors)
        self.ivf.nprobe = self.nprobe
        self.ids = ids
        self.n = len(ids)

    @property
    def n_items(self) -> int:
        return self.n

    def rank(self, texts, vectors) -> list[list[int]]:
        from onesearch_ray.retrieval.baselines import rrf_fuse

        lexical = self.bm25.search(list(texts), K)
        _, rows = self.ivf.search(np.ascontiguousarray(vectors, dtype=np.float32), K)
        dense = [[int(self.ids[r]) for r in row if r >= 0] for row in rows]
        return rrf_fuse(lexical, dense, depth=K)

    def describe(self) -> dict:
        return {"nlist": self.nlist, "nprobe": self.nprobe}


def _rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


def _plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["items"] for r in results]
    figure, axis = plt.subplots(figsize=(6, 4))
    for name, label in (("generator", "generator (kept codes)"), ("cascade", "BM25 + IVF + RRF")):
        axis.plot(sizes, [r[name]["cpu_ms"] for r in results], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("catalogue items")
    axis.set_ylabel("CPU ms per query (2 cores)")
    axis.set_title("Search cost against catalogue size (Home Depot, grown)")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
