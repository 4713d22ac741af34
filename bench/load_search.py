"""Bounded load test of ``POST /search``: concurrent clients on loopback, zero 5xx expected.

Starts the search API on a trained run (``--run``; or targets a running one with ``--url``), then
``--concurrency`` clients send ``--requests`` searches in all: the run's queries (test split first),
half of them with a known user when the API lists users, plus a share of bad requests (blank query,
beam out of range, unknown user) that must come back 4xx. Reports queries/s and p50/p90/p99 latency
of the good requests, and every status seen; exits 1 on any 5xx or transport error.

    python bench/load_search.py --run runs/quickstart --concurrency 8 --requests 400
    python bench/load_search.py --url http://127.0.0.1:8000 --concurrency 4 --requests 100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.parquet as pq

from onesearch_ray.generator.served import ENGINES

BAD_REQUESTS = (
    {"query": "   ", "k": 10, "beam": 10},
    {"query": "drill", "k": 10, "beam": 100000},
    {"query": "drill", "user_id": "no-such-user", "k": 10, "beam": 10},
)


def run_queries(run: Path) -> list[str]:
    """The run's query texts, test split first (what users of a fresh deployment would send)."""
    table = pq.read_table(run / "queries.parquet", columns=["query", "split"])
    rows = sorted(zip(table.column("split").to_pylist(), table.column("query").to_pylist(), strict=True))
    return [q for split, q in rows if split == "test"] + [q for split, q in rows if split != "test"]


def build_requests(queries: list[str], users: list[str], n: int, k: int, beam: int, bad_share: float) -> list:
    rng = random.Random(0)
    requests = []
    for i in range(n):
        if rng.random() < bad_share:
            requests.append((False, BAD_REQUESTS[i % len(BAD_REQUESTS)]))
            continue
        body = {"query": queries[i % len(queries)], "k": k, "beam": beam}
        if users and rng.random() < 0.5:
            body["user_id"] = rng.choice(users)
        requests.append((True, body))
    return requests


async def client(http: httpx.AsyncClient, url: str, queue: asyncio.Queue, results: list) -> None:
    while not queue.empty():
        good, body = queue.get_nowait()
        started = time.perf_counter()
        try:
            response = await http.post(f"{url}/search", json=body)
            status = response.status_code
        except httpx.HTTPError as err:
            status = f"error: {type(err).__name__}"
        results.append((good, status, time.perf_counter() - started))


async def load(url: str, requests: list, concurrency: int, timeout: float) -> tuple[list, float]:
    queue: asyncio.Queue = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    results: list = []
    async with httpx.AsyncClient(timeout=timeout) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http, url, queue, results) for _ in range(concurrency)))
        return results, time.perf_counter() - started


def known_users(url: str) -> list[str]:
    response = httpx.get(f"{url}/users", params={"limit": 200}, timeout=30)
    return response.json() if response.status_code == 200 else []


def summarise(results: list, wall: float, args: argparse.Namespace) -> dict:
    good = sorted(latency for ok, status, latency in results if ok and status == 200)
    statuses = Counter(str(status) for _, status, _ in results)
    wrong_bad = sum(
        1 for ok, status, _ in results if not ok and not (isinstance(status, int) and 400 <= status < 500)
    )
    quantiles = statistics.quantiles(good, n=100) if len(good) >= 2 else [float("nan")] * 99
    return {
        "concurrency": args.concurrency,
        "requests": len(results),
        "k": args.k,
        "beam": args.beam,
        "wall_s": round(wall, 2),
        "ok_queries_per_s": round(len(good) / wall, 2),
        "p50_ms": round(quantiles[49] * 1000, 1),
        "p90_ms": round(quantiles[89] * 1000, 1),
        "p99_ms": round(quantiles[98] * 1000, 1),
        "statuses": dict(statuses),
        "server_errors": sum(n for s, n in statuses.items() if s.startswith("5") or s.startswith("error")),
        "bad_requests_not_4xx": wrong_bad,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="trained run: start the API on it (and take its queries)")
    parser.add_argument("--url", help="a running API instead (needs --run for queries, or --query)")
    parser.add_argument("--query", action="append", help="query text to send (repeatable)")
    parser.add_argument("--engine", default="vllm", choices=ENGINES)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--beam", type=int, default=10)
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of deliberately bad requests")
    parser.add_argument("--timeout", type=float, default=120.0, help="per-request client timeout (s)")
    parser.add_argument("--out", type=Path, help="write the summary JSON here")
    args = parser.parse_args()
    if not args.run and not (args.url and args.query):
        parser.error("give --run, or --url with --query")
    queries = args.query or run_queries(args.run)
    url = args.url
    if url is None:
        from serve_apps.launch import start

        url = start(args.run, port=args.port, engine=args.engine, blocking=False)
    users = known_users(url)
    requests = build_requests(queries, users, args.requests, args.k, args.beam, args.bad_share)
    asyncio.run(load(url, requests[: args.concurrency], args.concurrency, args.timeout))  # warm-up
    results, wall = asyncio.run(load(url, requests, args.concurrency, args.timeout))
    summary = summarise(results, wall, args)
    print(json.dumps(summary, indent=2))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["server_errors"] or summary["bad_requests_not_4xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
