"""Two workers whose shards straddle a batch multiple take the same steps (no collective waits
forever): SFT and GRPO, on a real torch.distributed (gloo) group of two processes."""

from __future__ import annotations

import copy
import functools
import os

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from onesearch_ray.generator.config import GRPOConfig, TrainConfig
from onesearch_ray.generator.grpo import ItemRewardTable, grpo_loss_of
from onesearch_ray.generator.train import Example, train
from onesearch_ray.rewards import RelevanceOracle, RewardConfig
from tests.ray_jobs import free_port
from tests.test_generator import tiny_model

SHARDS = (4, 3)  # global batch 2, one example a worker a step: alone, 4 steps an epoch and 3


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    model = tiny_model()
    vectors = model.item_vectors.numpy()
    examples = [
        Example("drill", vectors[i % 5], np.array([i % 5]), np.array([1.0])) for i in range(SHARDS[rank])
    ]
    table = ItemRewardTable(RewardConfig(), np.arange(5), np.zeros(5), RelevanceOracle())
    grpo = functools.partial(
        grpo_loss_of, reference=copy.deepcopy(model), rewards=table, config=GRPOConfig(group=3)
    )
    config = TrainConfig(epochs=2, batch_size=2, patience=0)
    steps = [
        len(train(model, examples, config)["steps"]),
        len(train(model, examples, config, loss_fn=grpo)["steps"]),
    ]
    with open(f"{out}.{rank}", "w") as file:
        file.write(",".join(map(str, steps)))
    dist.destroy_process_group()


def test_shards_that_straddle_a_batch_multiple_take_the_same_steps(tmp_path):
    """SFT, then GRPO, in one group of two workers."""
    out = str(tmp_path / "steps")
    context = mp.start_processes(_worker, args=(free_port(), out), nprocs=2, join=False, start_method="spawn")
    for _ in range(240):  # a hang (one worker in an all_reduce the other never calls) fails here
        if context.join(timeout=0.5):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail("the two workers did not finish: one waits in a collective")
    steps = [(tmp_path / f"steps.{rank}").read_text() for rank in (0, 1)]
    assert steps == ["6,6", "6,6"]  # SFT and GRPO: 2 epochs x 3 steps, the smaller shard's count on both
