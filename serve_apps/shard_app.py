"""Ray Serve deployments of the catalogue's shards (``onesearch_ray.catalogue.shards``).

One deployment per shard, one replica each (the shard's items live in it); the search deployment
plans every search once and sends the item step to all of them through their handles. A replica that
dies is started again by Serve: it rebuilds its items from the run and the add log, and catches up
with any add it missed before it answers.

    serve run serve_apps.search_app:build_app run=RUN shards=2
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from onesearch_ray.catalogue import NewItems
from onesearch_ray.catalogue.shards import CatalogueShard, log_reader
from onesearch_ray.generator.served import shard_catalogue
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.serving.service import ADD_LOG


@serve.deployment(num_replicas=1, max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5})
class CatalogueShardDeployment:
    def __init__(self, run: str, model: str, shard: int, n_shards: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        root = Path(run)
        load = functools.partial(shard_catalogue, root, shard=(shard, n_shards))
        digest = SemanticIdTokenizer.load(root / "sid_tokenizer").codebooks_digest
        self.shard = CatalogueShard(load(model), load, log_reader(root / ADD_LOG, digest))

    def top_items(self, plans, queries: np.ndarray, terms, k: int, records: int, model: str):
        return self.shard.top_items(plans, queries, terms, k, records, model)

    def add(self, items: NewItems, records: int) -> int:
        return self.shard.add(items, records)

    def records(self) -> int:
        return self.shard.records


class HandleShard:
    """A shard deployment's handle as a ``catalogue.shards.ShardClient`` (its calls return responses
    whose ``result()`` waits, as futures do)."""

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    def top_items(self, plans, queries, terms, k, records, model):
        return self.handle.top_items.remote(plans, queries, terms, k, records, model)

    def add(self, items: NewItems, records: int):
        return self.handle.add.remote(items, records)


def shard_deployments(run: str, model: str, n_shards: int) -> list[serve.Application]:
    """The bound shard deployments of a run's model, ``CatalogueShard0`` .. ``CatalogueShard{n-1}``."""
    return [
        CatalogueShardDeployment.options(name=f"CatalogueShard{index}").bind(run, model, index, n_shards)
        for index in range(n_shards)
    ]
