"""Cold-start items (../shared/docs/evaluation.md): held-out items added live, found by the generative model?

The run must come from ``onesearch encode --holdout-cold``, then trained as usual (``onesearch
generator``; the run's served generator is scored, its latest: ``RUN/generator`` or an alignment): its
held-out items (``RUN/holdout.json``) were left out of KHQE fitting and of every training stage.
This adds them to the served generator's live catalogue with the frozen codebooks as ``POST /items``
does (``generator.served.join_held_out``, reference engine), then reports over them:

- ``own_title``: each held-out item's own title as the query; HR@10 / HR@350 of that item;
- ``test_queries``: the test queries that judge a held-out item relevant, the usual metrics
  counting only held-out items as relevant;

for the model (``ServedGenerator.rank``, what ``/search`` answers with, at its own beam unless
``--beam``; ``model_trained``: its own-title figures for as many trained items, the reference) and
for BM25, dense and their RRF (``--e5``: also dense e5 and RRF-e5), which index the new items like
any other. Writes ``cold_start.json`` and ``cold_start.md`` (to ``--out``, default the run directory).

    python bench/cold_start.py --run runs/hd_cold --data ../shared/data/homedepot
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from onesearch_ray.data import load_track  # noqa: E402
from onesearch_ray.eval.coldstart import cold_start_report, write_cold_start  # noqa: E402
from onesearch_ray.eval.config import ColdStartConfig  # noqa: E402
from onesearch_ray.generator.served import join_held_out, load_served  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", required=True, type=Path, help="trained run encoded with --holdout-cold")
    parser.add_argument("--data", required=True, type=Path, help="the track directory the run encoded")
    parser.add_argument(
        "--beam", type=int, help="beam width of the model's search (default: the served model's own)"
    )
    parser.add_argument("--k", type=int, default=350, help="ranking depth (items), at most 350")
    parser.add_argument("--limit", type=int, default=0, help="first N queries per task (0: all)")
    parser.add_argument("--e5", action="store_true", help="also dense e5 and RRF of BM25 + e5 (cached)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, help="directory for cold_start.json/.md (default: the run)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = ColdStartConfig(beam=args.beam, k=args.k, limit=args.limit, e5=args.e5)
    started = time.perf_counter()
    track = load_track(args.data)
    served, live = load_served(args.run)
    added = time.perf_counter()
    held_out = join_held_out(served, live, track)
    added_in = time.perf_counter() - added
    report = cold_start_report(served, live.snapshot, args.run, track, held_out, config, added_in)
    report["held_out"]["total_seconds"] = time.perf_counter() - started
    out = args.out or args.run
    write_cold_start(args.run, report, config, out)
    print(f"wrote {out / 'cold_start.json'} and {out / 'cold_start.md'}")
    return report


if __name__ == "__main__":
    main()
