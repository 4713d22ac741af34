"""Multi-stage SFT job (Ray Train ``TorchTrainer``, DDP over N CPU or GPU workers).

Stages (paper section 3): ``alignment`` -> ``cooccurrence`` -> ``personalization``; each starts
from the previous stage's model. Before the first stage the SID-aware tokenizer is trained and the
model built (``RUN/model/init``). Per stage, under ``RUN/sft/<stage>/``:

    examples.parquet          the (prompt, target) pairs
    step_0000200/ ...         checkpoints (HF weights + optimizer + state.json), every N steps and at the end
    metrics.jsonl             loss, target-token accuracy, lr, throughput per logging window

and the stage's final model goes to ``RUN/model/<stage>`` (an HF directory vLLM can load).
A stopped or failed job rerun with the same arguments resumes from the last complete checkpoint.

Resources: ``--workers N`` (each ``--cpus-per-worker`` CPUs, or one GPU with ``--gpu``). With more
than one node, RUN must be on storage every node can reach.

    python -m pipelines.train --run RUN --data DIR [--stage alignment|cooccurrence|personalization|all]
    ray job submit -- python -m pipelines.train --run RUN --data DIR --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.train
import ray.train.torch
import torch

from onesearch_ray.io import write_parquet
from onesearch_ray.model import load_model, save_model
from onesearch_ray.runs import RunDir, write_latest_model
from onesearch_ray.train import checkpoints
from onesearch_ray.train.config import TrainConfig, load_train_config
from onesearch_ray.train.sft import SFTConfig, make_optimizer, tokenize_pairs, train
from onesearch_ray.train.stages import STAGES
from onesearch_ray.train.workflow import build_stage_pairs, prepare_model_init
from pipelines.common import init_ray

log = logging.getLogger("onesearch.train")


def train_worker(loop_config: dict) -> None:
    """Runs on every Ray Train worker: load, resume, wrap in DDP, train, checkpoint."""
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    if loop_config["threads"]:
        torch.set_num_threads(loop_config["threads"])
    sft = SFTConfig(**loop_config["sft"])
    stage_dir = Path(loop_config["stage_dir"])
    model, tokenizer = load_model(loop_config["init_dir"])
    table = pq.read_table(stage_dir / "examples.parquet")
    pairs = list(zip(table.column("prompt").to_pylist(), table.column("target").to_pylist(), strict=True))
    examples = tokenize_pairs(tokenizer, pairs, sft.max_length)

    start_step, optimizer_state = 0, None
    latest = checkpoints.latest(stage_dir)
    if latest is not None:
        start_step, optimizer_state = checkpoints.restore(latest, model)
        if rank == 0:
            log.info("%s: resuming from %s (step %d)", loop_config["stage"], latest.name, start_step)
    model = ray.train.torch.prepare_model(model)
    optimizer = make_optimizer(model, sft)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)

    def on_log(step: int, metrics: dict) -> None:
        if rank == 0:
            log.info(
                "%s step %d/%d loss %.4f acc %.3f lr %.2e %.0f tok/s",
                loop_config["stage"],
                step,
                metrics["steps"],
                metrics["loss"],
                metrics["token_accuracy"],
                metrics["lr"],
                metrics["target_tokens_per_s"],
            )
            with open(stage_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps({"stage": loop_config["stage"], **metrics}) + "\n")

    def on_checkpoint(step: int, optimizer: torch.optim.Optimizer, metrics: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                checkpoints.write(Path(tmp), _unwrap(model), optimizer, step, metrics)
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(
                {"step": step, **metrics},
                checkpoint=checkpoint,
                checkpoint_dir_name=checkpoints.dir_name(step),
            )

    train(
        model,
        examples,
        sft,
        pad_id=tokenizer.pad_token_id,
        rank=rank,
        world_size=world_size,
        optimizer=optimizer,
        start_step=start_step,
        device=ray.train.torch.get_device(),
        on_log=on_log,
        on_checkpoint=on_checkpoint,
    )


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def run_stage(run: RunDir, stage: str, init_dir: Path, config: TrainConfig, data: str) -> Path:
    """Train one stage with a TorchTrainer; returns the directory of the stage's final model."""
    stage_dir = run / f"sft/{stage}"
    final_dir = run / f"model/{stage}"
    if (final_dir / "config.json").exists() and (run.stage(f"train.{stage}") or {}).get("outputs"):
        log.info("%s: already trained (%s); skipping", stage, final_dir)
        return final_dir
    sft = config.stages[stage]
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = config.cpus_per_worker or max(1, cpus // config.num_workers)
    trainer = ray.train.torch.TorchTrainer(
        train_worker,
        train_loop_config={
            "stage": stage,
            "stage_dir": str(stage_dir.resolve()),
            "init_dir": str(init_dir.resolve()),
            "sft": vars(sft),
            "threads": 0 if config.use_gpu else threads,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=config.num_workers,
            use_gpu=config.use_gpu,
            resources_per_worker=None if config.use_gpu else {"CPU": threads},
        ),
        run_config=ray.train.RunConfig(
            name=stage,
            storage_path=str((run / "sft").resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    trainer.fit()
    latest = checkpoints.latest(stage_dir)
    if latest is None:
        raise RuntimeError(f"{stage}: training finished without a checkpoint in {stage_dir}")
    model, tokenizer = load_model(init_dir)
    checkpoints.restore(latest, model)
    save_model(model, tokenizer, final_dir)
    run.record_stage(
        f"train.{stage}",
        config={"sft": vars(sft), "workers": config.num_workers},
        inputs={"data": data, "init": str(init_dir)},
        outputs={
            "model": str(final_dir),
            "checkpoint": latest.name,
            "metrics": checkpoints.read_state(latest)["metrics"],
        },
    )
    return final_dir


def write_stage_examples(run: RunDir, stage: str, pairs: list[tuple[str, str]]) -> None:
    table = pa.table({"prompt": [p for p, _ in pairs], "target": [t for _, t in pairs]})
    write_parquet(run / f"sft/{stage}/examples.parquet", table)


def train_stages(run_dir: str | Path, data: str | Path, stages: list[str], config: TrainConfig) -> Path:
    """Tokenizer + model init (once), then each requested stage in paper order."""
    run = RunDir(run_dir)
    init_dir = prepare_model_init(run.path, data, config)
    previous = init_dir
    for stage in STAGES:
        if stage not in stages:
            final = run / f"model/{stage}"
            previous = final if (final / "config.json").exists() else previous
            continue
        pairs = build_stage_pairs(run.path, data, stage)
        if not pairs:
            log.warning("%s: this track has no training signal for the stage; skipped", stage)
            continue
        log.info("%s: %d training pairs", stage, len(pairs))
        write_stage_examples(run, stage, pairs)
        previous = run_stage(run, stage, previous, config, str(data))
    write_latest_model(run.path, previous)
    return previous


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run directory (after `onesearch encode`)")
    parser.add_argument("--data", required=True, help="the track directory the run was encoded from")
    parser.add_argument("--stage", default="all", choices=[*STAGES, "all"])
    parser.add_argument("--config", help="YAML file with a `train:` section")
    parser.add_argument("--workers", type=int, help="Ray Train workers (DDP)")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--size", help="model size preset: tiny, small, base, large")
    parser.add_argument("--max-steps", type=int, help="cap every stage at this many steps (smoke runs)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    config = load_train_config(
        args.config, workers=args.workers, use_gpu=args.gpu or None, size=args.size, max_steps=args.max_steps
    )
    init_ray(args.address)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    final = train_stages(args.run, args.data, stages, config)
    print(f"trained model: {final}")
    return final


if __name__ == "__main__":
    main()
