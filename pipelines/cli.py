"""``onesearch``: one command, one subcommand per pipeline stage.

onesearch synth --out DIR            write the synthetic catalogue + search log
onesearch encode --data DIR --out RUN   KHQE: embeddings -> semantic IDs (Ray Data)
onesearch quickstart [--data DIR]    the whole pipeline on the default (synthetic) data
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

DEFAULT_QUICKSTART_RUN = Path("runs/quickstart")


def _cmd_synth(args: argparse.Namespace) -> int:
    from onesearch_ray.data import SyntheticConfig, write_synthetic

    path = write_synthetic(args.out, SyntheticConfig(seed=args.seed, n_items=args.items))
    print(f"synthetic track written to {path}")
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    from pipelines import prepare

    argv = ["--data", str(args.data), "--out", str(args.out), "--actors", str(args.actors)]
    argv += ["--config", args.config] if args.config else []
    argv += ["--layout", args.layout] if args.layout else []
    argv += ["--no-keywords"] if args.no_keywords else []
    prepare.main(argv)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from onesearch_ray.data import SyntheticConfig, write_synthetic
    from pipelines import prepare

    run = Path(args.out)
    data = Path(args.data) if args.data else run / "data"
    if not args.data:
        write_synthetic(data, SyntheticConfig(seed=args.seed))
        print(f"[1/1] default data: synthetic catalogue and search log in {data}")
    prepare.main(
        ["--data", str(data), "--out", str(run)] + (["--config", args.config] if args.config else [])
    )
    print(f"\nrun directory: {run.resolve()}  (codes_report.json, sid_tokenizer/, items.parquet)")
    return 0


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
    synth.set_defaults(handler=_cmd_synth)

    encode = commands.add_parser("encode", help="KHQE: embed the catalogue and fit semantic IDs (Ray Data)")
    encode.add_argument("--data", required=True, type=Path, help="track directory")
    encode.add_argument("--out", required=True, type=Path, help="run directory")
    encode.add_argument("--config", help="YAML config (see configs/default.yaml)")
    encode.add_argument("--layout", help="codebook layout, e.g. 4096-1024-512+opq2x256")
    encode.add_argument("--no-keywords", action="store_true", help="disable keyword enhancement")
    encode.add_argument("--actors", type=int, default=1, help="encoder actors")
    encode.set_defaults(handler=_cmd_encode)

    quick = commands.add_parser("quickstart", help="run the pipeline end to end on the default data")
    quick.add_argument("--data", type=Path, help="a track directory instead of the synthetic default")
    quick.add_argument("--out", type=Path, default=DEFAULT_QUICKSTART_RUN)
    quick.add_argument("--config", help="YAML config")
    quick.add_argument("--seed", type=int, default=0)
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
        print(f"onesearch {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
