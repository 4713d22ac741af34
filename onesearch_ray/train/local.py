"""Multi-stage SFT and DPO/GRPO alignment in this process on one device, without Ray: for a
single-GPU box, or debugging.

Same run-directory layout, checkpoints, resume and final models as the Ray Train job
(``pipelines/train.py``); only the worker shell differs.

    python -m onesearch_ray.train.local --run RUN --data DIR [--config YAML] [--device cuda]
    python -m onesearch_ray.train.local --run RUN --data DIR --stage dpo [--feedback LOG] [--name NAME]
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from onesearch_ray.train import checkpoints
from onesearch_ray.train.alignment import ALIGN_STAGES, AlignJob, align_options, align_run, run_align_loop
from onesearch_ray.train.config import load_train_config
from onesearch_ray.train.stages import STAGES
from onesearch_ray.train.workflow import StageJob, run_stage_loop, train_stages


def in_process_trainer(
    device: str, loop: Callable[..., None] = run_stage_loop
) -> Callable[[StageJob | AlignJob], None]:
    """``train_stage`` that runs ``loop`` (``run_stage_loop`` for SFT, ``run_align_loop`` for
    DPO/GRPO) here and writes checkpoints straight to the stage dir."""

    def train_stage(job: StageJob | AlignJob) -> None:
        def save_checkpoint(step: int, model, optimizer, metrics: dict) -> None:
            checkpoints.write(job.stage_dir / checkpoints.dir_name(step), model, optimizer, step, metrics)
            checkpoints.prune(job.stage_dir, keep=checkpoints.KEEP)

        loop(job, device=device, save_checkpoint=save_checkpoint)

    return train_stage


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python -m onesearch_ray.train.local", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--run", required=True, help="run directory (after `onesearch encode`)")
    parser.add_argument("--data", required=True, help="the track directory the run was encoded from")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all", *ALIGN_STAGES])
    parser.add_argument("--config", help="YAML file with `train:` (and `align:`, `rewards:`) sections")
    parser.add_argument("--feedback", help="dpo: the server's live feedback log (phase 2 from it)")
    parser.add_argument("--name", help="dpo/grpo: RUN/align/NAME and RUN/model/NAME (default: the stage)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", help="model size preset: tiny, small, base, large")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many steps (smoke runs)")
    args = parser.parse_args(argv)
    if args.name is not None and args.stage not in ALIGN_STAGES:
        parser.error("--name applies to --stage dpo or grpo only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = load_train_config(args.config, size=args.size, max_steps=args.max_steps)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 weights, TF32 matmuls: same loss, faster
    if args.stage in ALIGN_STAGES:
        trainer = in_process_trainer(args.device, run_align_loop)
        final = align_run(
            args.run, args.data, args.stage, args.config, trainer, **align_options(args, config)
        )
    else:
        stages = list(STAGES) if args.stage == "all" else [args.stage]
        final = train_stages(args.run, args.data, stages, config, in_process_trainer(args.device))
    print(f"trained model: {final}")
    return final


if __name__ == "__main__":
    main()
