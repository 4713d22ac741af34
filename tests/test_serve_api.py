"""The search API over real HTTP: Ray Serve + the vLLM engine (CPU), bad input, live catalogue updates."""

from __future__ import annotations

import concurrent.futures
import socket

import httpx
import pytest

ENGINE = "vllm"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def api(ray_cluster, trained_small_run):
    from ray import serve

    from serve_apps.launch import start

    url = start(trained_small_run, host="127.0.0.1", port=_free_port(), engine=ENGINE, blocking=False)
    with httpx.Client(base_url=url, timeout=120) as client:
        yield client
    serve.shutdown()


def test_health_and_openapi(api):
    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] == 400
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/search", "/items", "/healthz", "/users/{user_id}"} <= set(paths)


def test_search_returns_valid_items(api):
    body = api.post("/search", json={"query": "cordless drill", "k": 5, "beam": 10})
    assert body.status_code == 200, body.text
    result = body.json()
    assert 1 <= len(result["items"]) <= 5 and result["timing_ms"] > 0
    for item in result["items"]:
        assert item["title"] and item["sid"].startswith("<a_")
    scores = [item["score"] for item in result["items"]]
    assert scores == sorted(scores, reverse=True)


def test_known_user_and_explicit_history(api):
    user = api.get("/users", params={"limit": 1}).json()[0]
    assert api.post("/search", json={"query": "lamp", "user_id": user, "k": 3, "beam": 5}).status_code == 200
    summary = api.get(f"/users/{user}").json()
    history = [item["item_id"] for item in summary["recent_items"]]
    response = api.post(
        "/search", json={"query": "lamp", "user_id": "new-user", "history": history, "k": 3, "beam": 5}
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("payload", "status", "names"),
    [
        ({"query": "", "k": 5, "beam": 5}, 422, "query"),
        ({"query": "   ", "k": 5, "beam": 5}, 422, "blank"),
        ({"query": "x" * 600, "k": 5, "beam": 5}, 422, "query"),
        ({"query": 42, "k": 5, "beam": 5}, 422, "query"),
        ({"query": "lamp", "k": "ten", "beam": 5}, 422, "k"),
        ({"query": "lamp", "k": 0, "beam": 5}, 422, "k"),
        ({"query": "lamp", "k": 351, "beam": 5}, 422, "k"),
        ({"query": "lamp", "k": 5, "beam": 0}, 422, "beam"),
        ({"query": "lamp", "k": 5, "beam": 10_000}, 422, "beam"),
        ({"query": "lamp", "user_id": "nobody", "k": 5, "beam": 5}, 404, "nobody"),
        ({"query": "lamp", "history": [123456789], "k": 5, "beam": 5}, 422, "123456789"),
        ({"query": "lamp", "history": "abc", "k": 5, "beam": 5}, 422, "history"),
        ({"k": 5, "beam": 5}, 422, "query"),
        ({"query": "lamp", "surprise": 1}, 422, "surprise"),
    ],
)
def test_bad_input_gets_4xx_naming_the_problem(api, payload, status, names):
    response = api.post("/search", json=payload)
    assert response.status_code == status, response.text
    assert names in response.text


def test_invalid_json_and_wrong_content(api):
    response = api.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "json" in response.text.lower()
    assert api.post("/search", json=[1, 2, 3]).status_code == 422
    assert api.get("/users/nobody").status_code == 404
    assert api.get("/items/987654321").status_code == 404


def test_live_catalogue_update_is_searchable_at_once(api):
    new_item = {"item_id": 900001, "title": "Zyntrax Quantum Hover Kettle", "brand": "Zyntrax"}
    added = api.post("/items", json={"items": [new_item]})
    assert added.status_code == 200, added.text
    sid = added.json()["added"][0]["sid"]
    assert added.json()["trie_version"] >= 1
    assert api.get("/items/900001").json()["sid"] == sid
    # the new SID is a valid target now: BM25 finds the item, and the generative path may return it
    bm25 = api.post("/search/bm25", json={"query": "zyntrax hover kettle", "k": 3}).json()["items"]
    assert bm25[0]["item_id"] == 900001
    # the very next generative search decodes against the updated trie
    after = api.post("/search", json={"query": "hover kettle", "k": 3, "beam": 5}).json()
    assert after["trie_version"] == added.json()["trie_version"]
    assert api.post("/items", json={"items": [new_item]}).status_code == 422  # duplicate id
    assert api.post("/items", json={"items": []}).status_code == 422


def test_concurrent_requests_are_batched_without_errors(api):
    payloads = [
        {"query": q, "k": 3, "beam": 5} for q in ("drill", "lamp", "sofa", "kettle", "sneaker", "paint")
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda p: api.post("/search", json=p).status_code, payloads))
    assert statuses == [200] * len(payloads)


def test_sigterm_stops_servers_like_ctrl_c():
    """`kill` reaches the servers' KeyboardInterrupt shutdown path (Serve shutdown, demo close)."""
    import os
    import signal
    import time

    from pipelines.cli import _stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once by the handler
    finally:
        signal.signal(signal.SIGTERM, previous)
