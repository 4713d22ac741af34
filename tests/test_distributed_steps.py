"""Ray Train's workers, on a real torch.distributed (gloo) group of two processes: every worker
takes one worker's steps on one worker's batches (each its share of every batch), so two workers
train as one would; and workers handed lists of different lengths (shards that straddle a batch
multiple) still take the same steps, SFT and GRPO, none waiting in a collective alone."""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from onesearch_ray.generator.config import GRPOConfig, TrainConfig
from onesearch_ray.generator.grpo import ItemRewardTable, grpo_loss_of
from onesearch_ray.generator.train import Example, train
from onesearch_ray.rewards import RelevanceOracle, RewardConfig
from tests.ray_jobs import free_port
from tests.test_generator import tiny_model

UNEVEN = (7, 6)  # examples handed to each worker: alone, 3 steps an epoch at batch 2 and 3
SAME = TrainConfig(epochs=2, batch_size=4, learning_rate=0.01, weight_learning_rate=0.05, patience=0)


def _examples(count: int) -> list[Example]:
    vectors = tiny_model().item_vectors.numpy()
    words = ("drill", "paint", "hose", "bit", "garden")
    return [Example(words[i % 5], vectors[i % 5], np.array([i % 5]), np.array([1.0])) for i in range(count)]


def _uneven_worker(rank: int, out: str) -> list[int]:
    model = tiny_model()
    table = ItemRewardTable(RewardConfig(), np.arange(5), np.zeros(5), RelevanceOracle())
    grpo = functools.partial(
        grpo_loss_of, reference=copy.deepcopy(model), rewards=table, config=GRPOConfig(group=3)
    )
    config = TrainConfig(epochs=2, batch_size=2, patience=0)
    examples = _examples(UNEVEN[rank])
    steps = [
        len(train(model, examples, config)["steps"]),
        len(train(model, examples, config, loss_fn=grpo)["steps"]),
    ]
    with open(f"{out}.{rank}", "w") as file:
        file.write(",".join(map(str, steps)))


def _same_worker(rank: int, out: str) -> None:
    torch.manual_seed(rank)  # apart: rank 0's start reaches every worker (train's broadcast)
    model = tiny_model()
    train(model, _examples(8), SAME)
    torch.save(model.state_dict(), f"{out}.{rank}")


def _group(rank: int, port: int, work, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    work(rank, out)
    dist.destroy_process_group()


def _run_pair(work, out: str) -> None:
    context = mp.start_processes(
        _group, args=(free_port(), work, out), nprocs=2, join=False, start_method="spawn"
    )
    for _ in range(240):  # a hang (one worker in an all_reduce the other never calls) fails here
        if context.join(timeout=0.5):
            return
    for process in context.processes:
        process.kill()
    pytest.fail("the two workers did not finish: one waits in a collective")


def test_lists_of_different_lengths_take_the_same_steps(tmp_path):
    """SFT, then GRPO, in one group of two workers."""
    out = str(tmp_path / "steps")
    _run_pair(_uneven_worker, out)
    steps = [(tmp_path / f"steps.{rank}").read_text() for rank in (0, 1)]
    assert steps == ["6,6", "6,6"]  # 2 epochs x 3 steps (the shorter list's 6 // 2) on both


def test_two_workers_train_as_one_worker_does(tmp_path):
    out = str(tmp_path / "weights")
    _run_pair(_same_worker, out)
    torch.manual_seed(0)  # rank 0's start
    alone = tiny_model()
    train(alone, _examples(8), SAME)
    for rank in (0, 1):
        state = torch.load(f"{out}.{rank}")
        for name, value in alone.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-4, msg=name)  # float sums only
