"""The generator's training job on Ray Train (``TorchTrainer``, N CPU or GPU workers), then its scores.

    python -m pipelines.generator --run RUN --data DIR [--config YAML] [--workers N]
    ray job submit -- python -m pipelines.generator --run RUN --data DIR

RUN is a directory ``onesearch encode`` wrote (cached text vectors, KHQE SIDs). The job trains the
CPU-first generator (``onesearch_ray.generator``) on the track's train searches, keeps the weights
that score best on ``valid``, saves them to ``RUN/generator`` and writes the untrained and trained
model's valid and test metrics to ``RUN/generator/metrics.json``. The training state is a Ray Train
checkpoint (``ray.train.report``) in ``RUN/ray_train/generator`` (``--storage`` for another place
every node reaches: a path or a pyarrow URI such as ``s3://``): a lost worker restarts the group
from it (``FailureConfig``, ``--max-failures``), and a stopped job rerun with the same arguments
resumes from it; it is removed once the model is saved. With several workers each trains on its
shard of the searches and gradients are averaged (RUN must be on storage every node can reach).

    python -m pipelines.generator --run RUN --data DIR --feedback RUN/feedback.sqlite [--name dpo]

``--feedback``: DPO of the run's served generator (``RUN/generator``, or its last alignment) on
the impressions of that feedback log (clicks and orders above skipped items,
``generator.preference``) into ``RUN/generator-NAME``, resumable from ``RUN/ray_train/generator-NAME``;
its metrics go to ``RUN/generator-NAME/metrics.json``. Serve it live
with ``POST /model {"model": "generator-NAME"}``.

    python -m pipelines.generator --run RUN --data DIR --grpo [--name grpo]

``--grpo``: TPMA-GRPO of the run's served generator on the track's logged train searches (``generator.grpo``;
rewards from the config's ``rewards:`` section) into ``RUN/generator-NAME``, resumable the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import tempfile
from pathlib import Path

import pyarrow.fs
import ray.train
import ray.train.torch
import torch

from onesearch_ray.data import detect_format
from onesearch_ray.generator.config import GeneratorJobConfig, load_job_config
from onesearch_ray.generator.job import MODEL_DIR, align_on_worker, evaluate_run, train_on_worker
from onesearch_ray.generator.train import read_training_state, write_training_state
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.rewards import RewardConfig, load_reward_config
from pipelines.common import TorchTrainer, init_ray


class RayTrainCheckpoints:
    """The training state as Ray Train checkpoints: rank 0 reports it with ``ray.train.report`` into
    the run's storage, the others report without one (every worker reports at the same steps);
    after a restart (a lost worker, a rerun of the job) every worker reads the latest from
    ``ray.train.get_checkpoint``."""

    FILE = "training_state.pt"

    def __init__(self, storage: str) -> None:
        self.storage = storage

    def __str__(self) -> str:
        return f"the Ray Train checkpoint in {self.storage}"

    def load(self) -> dict | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return read_training_state(Path(folder) / self.FILE)

    def save(self, payload: dict, step: int) -> None:
        if ray.train.get_context().get_world_rank() != 0:
            ray.train.report({"step": step})
            return
        with tempfile.TemporaryDirectory() as folder:
            write_training_state(Path(folder) / self.FILE, payload)
            ray.train.report({"step": step}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def _worker(loop_config: dict) -> None:
    context = ray.train.get_context()
    torch.set_num_threads(loop_config["threads"])
    run, data, job = loop_config["run"], loop_config["data"], loop_config["config"]
    rank = context.get_world_rank()
    checkpoints = RayTrainCheckpoints(loop_config["storage"])
    if loop_config["name"] is None:
        train_on_worker(run, data, job, rank, checkpoints)
    else:
        align_on_worker(
            run,
            data,
            job,
            loop_config["name"],
            loop_config["feedback"],
            loop_config["rewards"],
            rank,
            checkpoints,
        )


def train_generator(
    run: Path,
    data: Path,
    config: GeneratorJobConfig,
    workers: int = 1,
    gpu: bool = False,
    name: str | None = None,
    feedback: Path | None = None,
    rewards: RewardConfig | None = None,
    storage: str | None = None,
    max_failures: int = 3,
) -> None:
    """Train RUN/generator; with ``name``, align it into RUN/generator-NAME: DPO on the ``feedback``
    log, or without one TPMA-GRPO with ``rewards``. ``storage``: where Ray Train keeps the run's
    checkpoints (default ``RUN/ray_train``); a lost worker restarts the group from the latest one
    up to ``max_failures`` times. The run's checkpoints go once its model is saved."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    threads = max(1, cpus // workers)
    storage = storage or str((run / "ray_train").resolve())
    run_name = "generator" if name is None else f"generator-{name}"
    trainer = TorchTrainer(
        _worker,
        train_loop_config={
            "run": run.resolve(),
            "data": data.resolve(),
            "config": config,
            "threads": threads,
            "feedback": feedback.resolve() if feedback else None,
            "name": name,
            "rewards": rewards,
            "storage": f"{storage.rstrip('/')}/{run_name}",
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=workers, use_gpu=gpu, resources_per_worker=None if gpu else {"CPU": threads}
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
        ),
    )
    trainer.fit()
    _remove_run_storage(storage, run_name)


def _remove_run_storage(storage: str, run_name: str) -> None:
    """Delete the finished run's checkpoints, so the next training of this run starts afresh."""
    filesystem, root = pyarrow.fs.FileSystem.from_uri(storage)
    with contextlib.suppress(FileNotFoundError):
        filesystem.delete_dir(f"{root.rstrip('/')}/{run_name}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run directory (after `onesearch encode`)")
    parser.add_argument(
        "--data", required=True, type=Path, help="the track directory the run was encoded from"
    )
    parser.add_argument("--config", help="YAML file with a `generator:` section (model, train)")
    parser.add_argument("--workers", type=int, default=1, help="Ray Train workers")
    parser.add_argument("--gpu", action="store_true", help="one GPU per worker")
    parser.add_argument("--evaluate-only", action="store_true", help="score RUN/generator, do not train")
    parser.add_argument(
        "--feedback",
        type=Path,
        help="DPO of the run's served generator on this feedback log (what `onesearch serve` or `simulate "
        "--feedback-log` recorded) into RUN/generator-NAME",
    )
    parser.add_argument(
        "--grpo",
        action="store_true",
        help="TPMA-GRPO of the run's served generator on the track's logged train searches into "
        "RUN/generator-NAME",
    )
    parser.add_argument(
        "--name", help="with --feedback or --grpo: the new model is RUN/generator-NAME (default dpo / grpo)"
    )
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS or a local cluster)")
    parser.add_argument(
        "--storage",
        help="where Ray Train keeps checkpoints: a path or URI every node reaches (default RUN/ray_train)",
    )
    parser.add_argument(
        "--max-failures", type=int, default=3, help="restarts from the last checkpoint after a lost worker"
    )


def check_name(name: str) -> str:
    """A model name fit for a directory: letters, digits, '-' and '_'."""
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise SystemExit(f"--name {name!r}: use letters, digits, '-' and '_' only")
    return name


def check_inputs(run: Path, data: Path) -> None:
    """An encoded run and a track directory, named in a clear error before Ray starts (else a
    worker's traceback, after the run's checkpoint storage was made)."""
    detect_format(data)
    if not SemanticIdTokenizer.is_saved(Path(run) / "sid_tokenizer"):
        raise FileNotFoundError(
            f"{run}: not an encoded run (no sid_tokenizer/): "
            f"run `onesearch encode --data DIR --out {run}` first"
        )


def run(args: argparse.Namespace) -> dict:
    config = load_job_config(args.config)
    check_inputs(args.run, args.data)
    if args.feedback and args.grpo:
        raise SystemExit("--feedback (DPO) and --grpo are two alignments: choose one")
    name, model_dir = None, MODEL_DIR
    if args.feedback or args.grpo:
        name = check_name(args.name or ("dpo" if args.feedback else "grpo"))
        model_dir = f"{MODEL_DIR}-{name}"
    if not args.evaluate_only:
        init_ray(args.address)
        rewards = load_reward_config(args.config)
        train_generator(
            args.run,
            args.data,
            config,
            args.workers,
            args.gpu,
            name,
            args.feedback,
            rewards,
            args.storage,
            args.max_failures,
        )
    results = evaluate_run(args.run, args.data, config, model_dir)
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
