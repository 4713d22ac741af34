"""Simulated A/B test: users of the synthetic world search against the cascade and the trained models.

Systems (``--system``, repeatable, the first is the control; default: cascade and every generator
of the run, ``RUN/generator`` and its alignments): ``cascade`` (BM25 + dense RRF + personalised
re-rank), ``rrf``, ``random``, ``oracle``, ``NAME=MODEL_DIR`` (a generator directory) or
``NAME=URL``: a running search API, searched over HTTP, its pages' clicks and orders sent to its
``POST /feedback`` (the write token from $ONESEARCH_WRITE_TOKEN off loopback). A run
encoded with ``--holdout-cold`` has its held-out items added to each model's catalogue live before
the simulation (the cold-start item slice). Writes ``simulation.json``, ``simulation.md`` and
``simulation.png`` to ``--out`` (default ``RUN/simulation``). With ``--feedback-log LOG`` the models'
pages and the simulated users' clicks and orders go to a feedback log, as ``/feedback`` records
them: ``onesearch generator --feedback LOG`` learns from it.
Runs in this process (no Ray cluster).

    python -m pipelines.simulate --run runs/quickstart --data runs/quickstart/data --searches 2000
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from onesearch_ray.generator.served import ENGINES
from onesearch_ray.runs import HOLDOUT_FILE, read_holdout
from onesearch_ray.serving.schemas import TOKEN_ENV
from onesearch_ray.sim import World, simulate
from onesearch_ray.sim.config import SimulationConfig
from onesearch_ray.sim.report import to_markdown, write_report
from onesearch_ray.sim.specs import NAMED_SYSTEMS, SystemOptions, default_systems, system_builders

log = logging.getLogger("onesearch.simulate")


def add_simulate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="trained run directory")
    parser.add_argument("--data", required=True, type=Path, help="the synthetic track the run encoded")
    parser.add_argument(
        "--system",
        action="append",
        help=f"{', '.join(NAMED_SYSTEMS)}, NAME=MODEL_DIR or NAME=URL (a running search API); repeat; "
        "the first is the control "
        "(default: cascade and the run's generators)",
    )
    parser.add_argument("--searches", type=int, default=SimulationConfig.searches)
    parser.add_argument("--seed", type=int, default=SimulationConfig.seed)
    parser.add_argument("--engine", default="transformers", choices=ENGINES, help="the models' engine")
    parser.add_argument("--beam", type=int, default=50, help="beam width of the models' search")
    parser.add_argument("--cold-user-fraction", type=float, default=SimulationConfig.cold_user_fraction)
    parser.add_argument("--long-tail-share", type=float, default=SimulationConfig.long_tail_share)
    parser.add_argument("--bootstrap", type=int, default=SimulationConfig.bootstrap, help="resamples")
    parser.add_argument(
        "--tune-rerank",
        action="store_true",
        help="choose the cascade's re-rank weights on the simulator first (traffic of its own)",
    )
    parser.add_argument(
        "--feedback-log",
        type=Path,
        help="record the models' pages and the simulated users' clicks and orders in this feedback "
        "log (SQLite, as `onesearch serve` keeps), to train on with `onesearch generator --feedback`; "
        "measure the result on traffic of another --seed",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, help="output directory (default: RUN/simulation)")


def run_simulation(args: argparse.Namespace) -> dict:
    config = SimulationConfig(
        searches=args.searches,
        seed=args.seed,
        cold_user_fraction=args.cold_user_fraction,
        long_tail_share=args.long_tail_share,
        bootstrap=args.bootstrap,
    )
    options = SystemOptions(
        engine=args.engine,
        beam=args.beam,
        seed=args.seed,
        tune_rerank=args.tune_rerank,
        feedback_log=args.feedback_log,
        write_token=os.environ.get(TOKEN_ENV),
    )
    if not args.run.is_dir():
        raise FileNotFoundError(f"run directory {args.run} not found")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    cold = read_holdout(args.run) if (args.run / HOLDOUT_FILE).is_file() else []
    if not cold:
        log.info("%s holds no item out (encode with --holdout-cold): no cold-start item slice", args.run)
    world = World.from_directory(args.data, cold_items=cold)
    builders = system_builders(args.system or default_systems(args.run), args.run, world, options, config)
    report = simulate(world, builders, config)
    paths = write_report(report, args.out or args.run / "simulation")
    print(to_markdown(report))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.simulate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_simulate_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run_simulation(args)


if __name__ == "__main__":
    main()
