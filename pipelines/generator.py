"""The generator's training job on Ray Train (``TorchTrainer``, N CPU or GPU workers), then its scores.

    python -m pipelines.generator --run RUN --data DIR [--config YAML] [--workers N]
    ray job submit -- python -m pipelines.generator --run RUN --data DIR

RUN is a directory ``onesearch encode`` wrote (cached text vectors, KHQE SIDs). The job trains the
CPU-first generator (``onesearch_ray.generator``) on the track's train searches, keeps the weights
that score best on ``valid``, saves them to ``RUN/generator`` and writes the untrained and trained
model's valid and test metrics to ``RUN/generator/metrics.json``. A stopped job rerun with the same
arguments resumes from ``RUN/generator_train.pt``. With several workers each trains on its shard of
the searches and gradients are averaged (RUN must be on storage every node can reach).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import ray.train
import ray.train.torch
import torch

from onesearch_ray.generator.job import GeneratorJobConfig, evaluate_run, load_job_config, train_on_worker
from pipelines.common import init_ray
from pipelines.train import TorchTrainer


def _worker(loop_config: dict) -> None:
    context = ray.train.get_context()
    torch.set_num_threads(loop_config["threads"])
    train_on_worker(
        loop_config["run"],
        loop_config["data"],
        loop_config["config"],
        context.get_world_rank(),
        context.get_world_size(),
    )


def train_generator(
    run: Path, data: Path, config: GeneratorJobConfig, workers: int = 1, gpu: bool = False
) -> None:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, cpus // workers)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "run": run.resolve(),
            "data": data.resolve(),
            "config": config,
            "threads": threads,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu, resources_per_worker=None if gpu else {"CPU": threads}
        ),
        run_config=ray.train.RunConfig(name="generator", storage_path=str((run / "ray_train").resolve())),
    )
    trainer.fit()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory (after `onesearch encode`)")
    parser.add_argument(
        "--data", required=True, type=Path, help="the track directory the run was encoded from"
    )
    parser.add_argument("--config", help="YAML file with a `generator:` section (model, train)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--evaluate-only", action="store_true", help="score RUN/generator, do not train")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")


def run(args: argparse.Namespace) -> dict:
    config = load_job_config(args.config)
    if not args.evaluate_only:
        init_ray(args.address)
        train_generator(args.run, args.data, config, args.workers, args.gpu)
    results = evaluate_run(args.run, args.data, config)
    print(json.dumps(results, indent=2))
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.generator", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
