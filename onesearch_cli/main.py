"""``onesearch``: one command, one subcommand per pipeline stage.

onesearch synth --out DIR            write the synthetic catalogue + search log
onesearch encode --data DIR --out RUN   KHQE: embeddings -> semantic IDs (Ray Data)
onesearch generator --run RUN --data DIR   train and score the CPU-first generator (Ray Train)
onesearch quickstart [--data DIR]    the whole pipeline on the default (synthetic) data
onesearch simulate --run RUN --data DIR   simulated A/B test (cascade vs the trained models)
onesearch tune --run RUN --data DIR  Ray Tune sweep over KHQE codebook layouts (tuning/)
onesearch eval --run RUN --track T --data DIR   the run's generator beside BM25, dense and RRF
onesearch serve --run RUN            the search API (Ray Serve), ``onesearch demo`` its demo page
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import traceback
from pathlib import Path

from onesearch_ray.generator.served import ENGINES

DEFAULT_QUICKSTART_RUN = Path("runs/quickstart")
QUICKSTART_CONFIG = Path(__file__).resolve().parents[1] / "configs/quickstart.yaml"


def _cmd_synth(args: argparse.Namespace) -> int:
    from onesearch_ray.data import (
        KuaiSearchSynthConfig,
        SyntheticConfig,
        write_kuaisearch_synthetic,
        write_synthetic,
    )

    # Each layout has one language: English for onesearch, Chinese for kuaisearch.
    lang = args.lang or {"onesearch": "en", "kuaisearch": "zh"}[args.format]
    if (args.format, lang) == ("onesearch", "zh"):
        raise ValueError("--lang zh needs --format kuaisearch (the onesearch synthetic track is English)")
    if (args.format, lang) == ("kuaisearch", "en"):
        raise ValueError("--format kuaisearch writes a Chinese track: use --lang zh (or leave --lang out)")
    if args.format == "kuaisearch":
        path = write_kuaisearch_synthetic(args.out, KuaiSearchSynthConfig(seed=args.seed, n_items=args.items))
    else:
        path = write_synthetic(args.out, SyntheticConfig(seed=args.seed, n_items=args.items))
    print(f"synthetic track written to {path}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from pipelines import prepare

    argv = ["--data", str(args.data), "--out", str(args.out), "--actors", str(args.actors)]
    argv += ["--config", args.config] if args.config else []
    argv += ["--layout", args.layout] if args.layout else []
    argv += ["--no-keywords"] if args.no_keywords else []
    argv += ["--holdout-cold"] if args.holdout_cold else []
    prepare.main(argv)
    return 0


def _cmd_generator(args: argparse.Namespace) -> int:
    from pipelines import generator

    generator.run(args)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from pipelines import evaluate

    evaluate.run_eval(args.run, args.track, args.data, evaluate.config_from_args(args))
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from pipelines import simulate

    simulate.run_simulation(args)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from tuning import sweep

    sweep.run_from_args(args)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from serve_apps.launch import start

    _stop_on_sigterm()
    start(
        args.run,
        host=args.host,
        port=args.port,
        engine=args.engine,
        data=args.data,
        write_token=_read_token(args.write_token_file),
        feedback_log=args.feedback_log,
        held_out=not args.no_held_out,
        shards=args.shards,
    )
    return 0


def _read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    token = path.read_text().strip()
    if not token:
        raise SystemExit(f"--write-token-file {path}: the file is empty")
    return token


def _require_free_port(host: str, port: int, flag: str) -> None:
    """A port another process holds, named before anything starts (the quickstart would otherwise
    find it after minutes of training)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ValueError(
                f"{host}:{port} is in use ({err.strerror}): stop what holds it, or pass another {flag}"
            ) from None


def _cmd_demo(args: argparse.Namespace) -> int:
    from demo.app import launch

    _require_free_port(args.host, args.port, "--port")
    _stop_on_sigterm()
    launch(api_url=args.api, host=args.host, port=args.port, write_token=_read_token(args.write_token_file))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from onesearch_ray.data import SyntheticConfig, detect_format, load_track, write_synthetic
    from onesearch_ray.rewards import load_reward_config
    from pipelines import evaluate, generator, prepare

    if not args.no_serve:
        _require_free_port(args.host, args.demo_port, "--demo-port")
        if not os.environ.get("RAY_ADDRESS"):  # a local cluster: its API binds here
            _require_free_port(args.host, args.port, "--port")
    _stop_on_sigterm()
    run = Path(args.out)
    data = Path(args.data) if args.data else run / "data"
    config = ["--config", args.config] if args.config else []
    if not args.data:
        write_synthetic(data, SyntheticConfig(seed=args.seed))
        print(f"[1/5] default data: synthetic catalogue and search log in {data}")
    print("[2/5] encode: text vectors and KHQE semantic IDs (Ray Data)")
    holdout = [] if args.no_holdout else ["--holdout-cold"]  # the cold-start-items slice, always
    prepare.main(["--data", str(data), "--out", str(run), *config, *holdout])
    print("[3/5] train: the CPU-first generator, kept at its best valid score, then TPMA-GRPO (Ray Train)")
    generator.init_ray()
    job = generator.load_job_config(args.config)
    generator.train_generator(run, data, job)
    if load_track(data).interactions is not None:  # GRPO learns from the search log's clicks and orders
        generator.train_generator(run, data, job, name="grpo", rewards=load_reward_config(args.config))
    print("[4/5] evaluate: the generator beside BM25, dense and RRF")
    track = {"onesearch": "synthetic", "kuaisearch": "kuaisearch"}.get(
        detect_format(data), detect_format(data)
    )
    evaluate.run_eval(run, track, data, evaluate.EvalConfig(k=350))
    print(f"\nrun directory: {run.resolve()}")
    if args.no_serve:
        return 0
    from demo.app import launch
    from serve_apps.launch import start, stop, write_token_for

    print("[5/5] serve: the generator behind HTTP (Ray Serve + vLLM), and the demo page")
    token = write_token_for(run, args.host)
    api = start(
        run,
        host=args.host,
        port=args.port,
        engine=args.engine,
        data=str(data),
        blocking=False,
        write_token=token,
    )
    print(f"demo page: http://{args.host}:{args.demo_port}  (Ctrl-C stops both)", flush=True)
    try:
        launch(api_url=api, host=args.host, port=args.demo_port, write_token=token)
    finally:
        stop()
    return 0


def _stop_on_sigterm() -> None:
    """``kill`` ends a command as Ctrl-C does (KeyboardInterrupt), so its shutdown code runs."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onesearch", description="OneSearch-Ray: generative e-commerce search"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    synth = commands.add_parser(
        "synth", help="write the seeded synthetic track (catalogue, users, search log)"
    )
    synth.add_argument("--out", required=True, type=Path)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--items", type=int, default=3000)
    synth.add_argument(
        "--format",
        choices=("onesearch", "kuaisearch"),
        default="onesearch",
        help="onesearch: parquet tables (default); kuaisearch: the KuaiSearch JSON-lines layout",
    )
    synth.add_argument(
        "--lang",
        choices=("en", "zh"),
        help="text language: en for onesearch, zh for kuaisearch (the default)",
    )
    synth.set_defaults(handler=_cmd_synth)

    encode = commands.add_parser("encode", help="KHQE: embed the catalogue and fit semantic IDs (Ray Data)")
    encode.add_argument("--data", required=True, type=Path, help="track directory")
    encode.add_argument("--out", required=True, type=Path, help="run directory")
    encode.add_argument("--config", help="YAML config (see configs/default.yaml)")
    encode.add_argument("--layout", help="codebook layout, e.g. 4096-1024-512+opq2x256")
    encode.add_argument("--no-keywords", action="store_true", help="disable keyword enhancement")
    encode.add_argument("--actors", type=int, default=1, help="encoder actors")
    encode.add_argument(
        "--holdout-cold", action="store_true", help="hold out the cold-start items (bench/cold_start.py)"
    )
    encode.set_defaults(handler=_cmd_encode)

    from pipelines import generator

    generator_job = commands.add_parser(
        "generator", help="train the CPU-first generator on Ray Train, then score it on valid and test"
    )
    generator.add_arguments(generator_job)
    generator_job.set_defaults(handler=_cmd_generator)

    from pipelines.evaluate import add_eval_arguments

    evaluation = commands.add_parser("eval", help="evaluate a trained run beside the baselines")
    add_eval_arguments(evaluation)
    evaluation.set_defaults(handler=_cmd_eval)

    from pipelines.simulate import add_simulate_arguments

    simulation = commands.add_parser(
        "simulate", help="simulated A/B test: synthetic users search the cascade and the trained models"
    )
    add_simulate_arguments(simulation)
    simulation.set_defaults(handler=_cmd_simulate)

    from tuning.sweep import add_tune_arguments

    tune = commands.add_parser("tune", help="Ray Tune sweep over KHQE layouts: proxies, then the generator")
    add_tune_arguments(tune)
    tune.set_defaults(handler=_cmd_tune)

    serving = commands.add_parser("serve", help="serve a trained run over HTTP (Ray Serve + vLLM)")
    serving.add_argument("--run", required=True, type=Path, help="trained run directory")
    serving.add_argument("--port", type=int, default=8000)
    serving.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    serving.add_argument("--engine", default="vllm", choices=ENGINES)
    serving.add_argument("--data", help="track directory for user behaviour (default: the one encoded)")
    serving.add_argument(
        "--write-token-file",
        type=Path,
        help="file holding the token /items, /feedback and POST /model require (default: "
        "$ONESEARCH_WRITE_TOKEN; off loopback without either, one is made in RUN/serve/write_token)",
    )
    serving.add_argument(
        "--feedback-log",
        type=Path,
        help="SQLite log of impressions, clicks, orders (default RUN/feedback.sqlite)",
    )
    serving.add_argument(
        "--no-held-out",
        action="store_true",
        help="leave a run's cold-start hold-out (encode --holdout-cold) out of the catalogue; by "
        "default those items join it live at start, as new items through /items do",
    )
    serving.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split the trained item rows over N shard deployments (one replica each) that score "
        "them; the search deployment plans once and merges their top items (default 1: it holds all)",
    )
    serving.set_defaults(handler=_cmd_serve)

    demo = commands.add_parser("demo", help="the Gradio demo page, talking to a running search API")
    demo.add_argument("--api", default="http://127.0.0.1:8000", help="base URL of `onesearch serve`")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--write-token-file", type=Path, help="the API's write token, for clicks and orders")
    demo.set_defaults(handler=_cmd_demo)

    quick = commands.add_parser("quickstart", help="run the pipeline end to end on the default data")
    quick.add_argument("--data", type=Path, help="a track directory instead of the synthetic default")
    quick.add_argument("--out", type=Path, default=DEFAULT_QUICKSTART_RUN)
    quick.add_argument("--config", default=str(QUICKSTART_CONFIG), help="YAML config")
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument("--no-serve", action="store_true", help="stop after the evaluation")
    quick.add_argument(
        "--no-holdout",
        action="store_true",
        help="train on every item; by default 5%% are held out of training and join live before the "
        "evaluation and serving (the cold-start items of docs/evaluation.md)",
    )
    quick.add_argument("--host", default="127.0.0.1", help="bind address of the API and the demo")
    quick.add_argument("--port", type=int, default=8000, help="search API port")
    quick.add_argument("--demo-port", type=int, default=7860, help="demo page port")
    quick.add_argument("--engine", default="vllm", choices=ENGINES)
    quick.set_defaults(handler=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except (ValueError, FileNotFoundError, NotADirectoryError) as err:
        if args.verbose:
            traceback.print_exc()
        hint = "" if args.verbose else " (--verbose shows where)"
        print(f"onesearch {args.command}: error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C, or `kill` where _stop_on_sigterm is set
        resume = args.command in ("generator", "quickstart")
        hint = "; rerun the same command to resume from the last checkpoint" if resume else ""
        print(f"\nonesearch {args.command}: interrupted{hint}", file=sys.stderr)
        return 130
