"""Training jobs (Ray Train ``TorchTrainer``, DDP over N CPU or GPU workers): multi-stage SFT, then
preference alignment (list-wise DPO, TPMA-GRPO).

Stages (paper section 3): ``alignment`` -> ``cooccurrence`` -> ``personalization``; each starts
from the previous stage's model. Before the first stage the SID-aware tokenizer is trained and the
model built (``RUN/model/init``). Per stage, under ``RUN/sft/<stage>/``:

    examples.parquet          the (prompt, target) pairs
    step_0000200/ ...         checkpoints (HF weights + optimizer + state.json), every N steps and at the end
    metrics.jsonl             loss, target-token accuracy, lr, throughput per logging window

and the stage's final model goes to ``RUN/model/<stage>`` (an HF directory vLLM can load).
A stopped or failed job rerun with the same arguments resumes from the last complete checkpoint.

After SFT, ``--stage dpo`` or ``--stage grpo`` aligns the run's latest model
(``onesearch_ray.train.alignment``): data and checkpoints under ``RUN/align/<name>/``, the result
in ``RUN/model/<name>``, made the latest model (``--name``, default the stage: a second round of
feedback goes to ``--name dpo-2`` beside the first). ``--feedback LOG`` builds DPO's phase 2 from the
server's live feedback log instead of the track's search log. ``--stage all`` is the three SFT stages.

Resources: ``--workers N`` (each ``--cpus-per-worker`` CPUs, or one GPU with ``--gpu``). With more
than one node, RUN must be on storage every node can reach.

    python -m pipelines.train --run RUN --data DIR [--stage alignment|cooccurrence|personalization|all]
    python -m pipelines.train --run RUN --data DIR --stage dpo [--feedback LOG] [--name NAME]
    ray job submit -- python -m pipelines.train --run RUN --data DIR --workers 2
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import ray
import ray.train
import ray.train.torch
import torch

from onesearch_ray.train import checkpoints
from onesearch_ray.train.alignment import ALIGN_STAGES, AlignJob, align_options, align_run, run_align_loop
from onesearch_ray.train.config import TrainConfig, load_train_config
from onesearch_ray.train.stages import STAGES
from onesearch_ray.train.workflow import StageJob, run_stage_loop, train_stages
from pipelines.common import init_ray


def train_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: the library's stage loop (SFT or alignment), DDP-wrapped,
    reporting checkpoints."""
    context = ray.train.get_context()
    if loop_config["threads"]:
        torch.set_num_threads(loop_config["threads"])

    def report_checkpoint(
        step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, metrics: dict
    ) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if context.get_world_rank() == 0:
                checkpoints.write(Path(tmp), model, optimizer, step, metrics)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                {"step": step, **metrics},
                checkpoint=checkpoint,
                checkpoint_dir_name=checkpoints.dir_name(step),
            )

    loop_config["loop"](
        loop_config["job"],
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=ray.train.torch.get_device(),
        wrap_model=ray.train.torch.prepare_model,
        save_checkpoint=report_checkpoint,
    )


class TorchTrainer(ray.train.torch.TorchTrainer):
    """Ray Train's ``TorchTrainer`` whose ``fit()`` leaves Ctrl-C to the driver.

    On the main thread, Ray Train's ``fit()`` installs a SIGINT handler that only asks the run's
    controller to abort: on a busy machine the first two Ctrl-C did nothing visible and the third
    exited. Without it, Ctrl-C raises KeyboardInterrupt inside ``fit()``'s ``ray.get`` (which sees a
    signal any thread received); the driver exits, and ``ray.shutdown`` at exit stops the run and a
    local cluster the driver started. (``fit()`` ran on a helper thread to the same end; a bare
    ``join()`` there lost a Ctrl-C that a Ray thread received, and a helper still inside ``ray.get``
    when Ray shut down made the driver exit with status 1.)
    """

    def _register_sigint_handler(self, controller: ray.actor.ActorHandle) -> None:
        """Install nothing (Ray Train's own hook, called by ``fit()`` on the main thread)."""


def ray_stage_trainer(
    config: TrainConfig, loop: Callable[..., None] = run_stage_loop
) -> Callable[[StageJob | AlignJob], None]:
    """``train_stage`` for the driver: one TorchTrainer per stage running ``loop`` (``run_stage_loop``
    for SFT, ``run_align_loop`` for DPO/GRPO), checkpoints under the stage dir."""

    def train_stage(job: StageJob | AlignJob) -> None:
        cpus = int(ray.cluster_resources().get("CPU", 1))
        threads = config.cpus_per_worker or max(1, cpus // config.num_workers)
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"job": job, "loop": loop, "threads": 0 if config.use_gpu else threads},
            scaling_config=ray.train.ScalingConfig(
                num_workers=config.num_workers,
                use_gpu=config.use_gpu,
                resources_per_worker=None if config.use_gpu else {"CPU": threads},
            ),
            run_config=ray.train.RunConfig(
                name=job.stage_dir.name,
                storage_path=str(job.stage_dir.parent),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=checkpoints.KEEP),
            ),
        )
        trainer.fit()

    return train_stage


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory (after `onesearch encode`)")
    parser.add_argument("--data", required=True, help="the track directory the run was encoded from")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all", *ALIGN_STAGES])
    parser.add_argument("--config", help="YAML file with `train:` (and `align:`, `rewards:`) sections")
    parser.add_argument("--feedback", help="dpo: the server's live feedback log (phase 2 from it)")
    parser.add_argument("--name", help="dpo/grpo: RUN/align/NAME and RUN/model/NAME (default: the stage)")
    parser.add_argument("--workers", type=int, help="Ray Train workers (DDP)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--size", help="model size preset: tiny, small, base, large")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many steps (smoke runs)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.name is not None and args.stage not in ALIGN_STAGES:
        parser.error("--name applies to --stage dpo or grpo only")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_train_config(
        args.config, workers=args.workers, use_gpu=args.gpu or None, size=args.size, max_steps=args.max_steps
    )
    init_ray(args.address)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.stage in ALIGN_STAGES:
        trainer = ray_stage_trainer(config, run_align_loop)
        final = align_run(
            args.run, args.data, args.stage, args.config, trainer, **align_options(args, config)
        )
    else:
        stages = list(STAGES) if args.stage == "all" else [args.stage]
        final = train_stages(args.run, args.data, stages, config, ray_stage_trainer(config))
    print(f"trained model: {final}")
    return final


if __name__ == "__main__":
    main()
