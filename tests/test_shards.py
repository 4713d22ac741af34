"""Shards on Ray Serve: the search deployment plans, two shard deployments hold and score the item
rows; over real HTTP they rank as one unsharded service does, take live adds, and survive the loss of a
shard replica (Serve starts it again; it rebuilds from the run and the add log)."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.ray_jobs import free_port, wait_for

QUERIES = ["cordless drill", "garden hose", "led lamp", "paint roller", "wood screws", "sofa", "steel"]


@pytest.fixture(scope="module")
def sharded(ray_cluster, generator_small_run, tmp_path_factory):
    """(base URL, run) of the search app with two shard deployments (torch engine: the decoder is not
    what is under test here)."""
    from ray import serve

    from serve_apps.launch import start

    run = tmp_path_factory.mktemp("sharded") / "run"
    shutil.copytree(generator_small_run, run)
    url = start(run, port=free_port(), engine="transformers", blocking=False, held_out=False, shards=2)
    yield url, run
    serve.shutdown()


def _top10(client: httpx.Client, query: str) -> list[int]:
    response = client.post("/search", json={"query": query, "k": 10})
    assert response.status_code == 200, response.text
    return [hit["item_id"] for hit in response.json()["items"]]


def test_two_shards_rank_as_one_take_adds_and_survive_a_lost_shard(sharded, generator_small_run, tmp_path):
    import ray
    from ray import serve

    from onesearch_ray.serving.schemas import AddItemsRequest, NewItem, SearchRequest
    from onesearch_ray.serving.service import SearchService

    url, run = sharded
    status = serve.status().applications["onesearch"].deployments
    assert {"CatalogueShard0", "CatalogueShard1"} <= set(status)
    single = SearchService(generator_small_run, "transformers")  # one process, every row
    with httpx.Client(base_url=url, timeout=120) as client:
        health = client.get("/healthz").json()
        assert health["items"] == single.n_items

        def assert_same_as_single() -> None:
            for query in QUERIES:
                want = [hit.item_id for hit in single.search([SearchRequest(query=query, k=10)])[0].items]
                assert _top10(client, query) == want, query

        assert_same_as_single()
        items = [
            {"item_id": 930_000 + n, "title": f"Quorbel {word} Zentrix"} for n, word in enumerate(QUERIES)
        ]
        for item in items:  # one add each: several add-log records, spread over both shards
            assert client.post("/items", json={"items": [item]}).status_code == 200

        def all_found() -> bool:
            return all(item["item_id"] in _top10(client, item["title"]) for item in items)

        assert all_found()
        single.add_items(AddItemsRequest(items=[NewItem(**item) for item in items]))
        assert_same_as_single()
        replica = next(
            actor
            for actor in ray.util.list_named_actors(all_namespaces=True)
            if "CatalogueShard0" in actor["name"] and "REPLICA" in actor["name"].upper()
        )
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)

        def searchable() -> bool:
            try:
                return (
                    client.post("/search", json={"query": "lamp", "k": 10}).status_code == 200 and all_found()
                )
            except httpx.HTTPError:
                return False

        wait_for(searchable, 180, "shard 0's new replica")  # rebuilt from the run and the add log
        assert_same_as_single()
