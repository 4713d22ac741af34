"""Live adds under search load, then after a restart: a running API, searched and written at once.

``--searchers`` threads call ``POST /search`` (the run's queries) while one thread posts ``/items``
(``--batch`` new items a request, made-up titles) for ``--seconds``. Reports every status seen and
whether each acknowledged item is found in the top 10 for its own title; writes the acknowledged
items to ``--out``. With ``--check FILE`` it only checks that the items of an earlier run's file are
all still there and found (run it after restarting the server). Exits 1 on any 5xx, transport error,
or item not found.

    python bench/live_adds.py --url http://127.0.0.1:8000 --run runs/hd --seconds 60 --out /tmp/added.json
    # stop the server (SIGTERM), start it again, then
    python bench/live_adds.py --url http://127.0.0.1:8000 --check /tmp/added.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.parquet as pq

WORDS = "walnut copper linen granite velvet cobalt maple bronze ivory slate amber quartz teal".split()
KINDS = "lamp shelf kettle drill rug faucet bench mirror hinge valve planter ladder".split()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--run", type=Path, help="the served run (its queries are searched)")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--searchers", type=int, default=6)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--first-id", type=int, default=800_000_000)
    parser.add_argument("--token", default=None, help="the server's write token, if it has one")
    parser.add_argument("--out", type=Path, help="JSON file for the acknowledged items")
    parser.add_argument("--check", type=Path, help="only check the items of this earlier --out file")
    args = parser.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    with httpx.Client(base_url=args.url, timeout=120, headers=headers) as client:
        if args.check:
            added = json.loads(args.check.read_text())["added"]
            report = {"checked": len(added), **_found(client, added)}
        else:
            report = _load(client, args)
            if args.out:
                args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "added"}, indent=1))
    bad = report.get("server_errors", 0) or report.get("transport_errors", 0) or report["not_found"]
    return 1 if bad else 0


def _load(client: httpx.Client, args) -> dict:
    queries = pq.read_table(args.run / "queries.parquet", columns=["query"]).column("query").to_pylist()
    stop, statuses, errors, latencies = threading.Event(), Counter(), Counter(), []

    def search(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            started = time.perf_counter()
            try:
                response = client.post("/search", json={"query": rng.choice(queries), "k": 10})
                statuses[response.status_code] += 1
                latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as err:
                errors[type(err).__name__] += 1

    threads = [threading.Thread(target=search, args=(seed,)) for seed in range(args.searchers)]
    for thread in threads:
        thread.start()
    added, add_statuses, rng, next_id = [], Counter(), random.Random(7), args.first_id
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        items = []
        for _ in range(args.batch):
            title = f"{rng.choice(WORDS).title()} {rng.choice(KINDS)} {rng.choice(WORDS)} Zq{next_id:x}"
            items.append({"item_id": next_id, "title": title})
            next_id += 1
        response = client.post("/items", json={"items": items})
        add_statuses[response.status_code] += 1
        if response.status_code == 200:
            added += items
    stop.set()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "seconds": args.seconds,
        "searches": sum(statuses.values()),
        "search_statuses": dict(statuses),
        "add_statuses": dict(add_statuses),
        "server_errors": sum(n for s, n in (statuses + add_statuses).items() if s >= 500),
        "transport_errors": sum(errors.values()),
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
        "acknowledged": len(added),
        **_found(client, added),
        "added": added,
    }


def _found(client: httpx.Client, added: list[dict]) -> dict:
    """How many acknowledged items are in the top 10 for their own title (and which are not)."""
    missing = []
    for item in added:
        hits = client.post("/search", json={"query": item["title"], "k": 10}).json().get("items", [])
        if item["item_id"] not in [hit["item_id"] for hit in hits]:
            missing.append(item["item_id"])
    return {"found_top10": len(added) - len(missing), "not_found": len(missing), "missing": missing[:20]}


if __name__ == "__main__":
    sys.exit(main())
