"""The search API over real HTTP: Ray Serve + the generator on the vLLM engine (CPU), bad input, live
catalogue updates, feedback, model swaps, the write token off loopback, and schemathesis over the
OpenAPI contract.

The server binds 0.0.0.0 (beyond loopback), so its write routes need the token; the client sends it.
"""

from __future__ import annotations

import concurrent.futures
import shutil
import socket
import threading
import time
from collections import Counter

import httpx
import pyarrow.compute as pc
import pytest

from onesearch_ray.data.schemas import Event
from tests.ray_jobs import free_port

ENGINE = "vllm"
TOKEN = "test-write-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def served(ray_cluster, generator_small_run, tmp_path_factory):
    """(base URL on loopback, feedback log path, restart) of a server bound to 0.0.0.0 with a token."""
    from ray import serve

    from serve_apps.launch import start

    port, log = free_port(), tmp_path_factory.mktemp("feedback") / "feedback.sqlite"
    run = tmp_path_factory.mktemp("served") / "run"  # its own copy: the server writes its add log there
    shutil.copytree(generator_small_run, run)

    def restart() -> str:
        start(
            run,
            host="0.0.0.0",
            port=port,
            engine=ENGINE,
            blocking=False,
            write_token=TOKEN,
            feedback_log=log,
        )
        return f"http://127.0.0.1:{port}"

    yield restart(), log, restart
    serve.shutdown()


@pytest.fixture(scope="module")
def api(served):
    with httpx.Client(base_url=served[0], timeout=120, headers=AUTH) as client:
        yield client


def test_health_and_openapi(api):
    health = api.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] == 400 and health["model"] == "generator"
    paths = api.get("/openapi.json").json()["paths"]
    assert {"/search", "/items", "/feedback", "/model", "/healthz", "/users/{user_id}"} <= set(paths)
    assert set(paths["/users/{user_id}"]["get"]["responses"]) == {"200", "404", "422"}
    assert set(paths["/items"]["post"]["responses"]) == {"200", "400", "401", "409", "422"}
    assert paths["/feedback"]["post"]["security"] == [{"HTTPBearer": []}]


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
        ({"query": "lamp", "history": [123456789], "k": 5, "beam": 5}, 404, "123456789"),
        ({"query": "lamp", "k": 5.5}, 422, "k"),
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
    # an item as the catalogue holds it: no score (only a search scores)
    assert api.get("/items/900001").json() == {"item_id": 900001, "title": new_item["title"], "sid": sid}
    bm25 = api.post("/search/bm25", json={"query": "zyntrax hover kettle", "k": 3}).json()["items"]
    assert bm25[0]["item_id"] == 900001
    # the very next generative search runs on the updated catalogue and finds the item first
    after = api.post("/search", json={"query": "Zyntrax Quantum Hover Kettle", "k": 3, "beam": 5}).json()
    assert after["trie_version"] == added.json()["trie_version"]
    assert after["items"][0]["item_id"] == 900001
    duplicate = api.post("/items", json={"items": [new_item]})
    assert duplicate.status_code == 409 and "900001" in duplicate.json()["detail"]
    assert api.post("/items", json={"items": []}).status_code == 422


def test_concurrent_requests_are_batched_without_errors(api):
    payloads = [
        {"query": q, "k": 3, "beam": 5} for q in ("drill", "lamp", "sofa", "kettle", "sneaker", "paint")
    ]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        statuses = list(pool.map(lambda p: api.post("/search", json=p).status_code, payloads))
    assert statuses == [200] * len(payloads)


def test_contract_details(api):
    """The details a new user tripped over: BM25 scores, whole floats as integers, short 422s, paging."""
    bm25 = api.post("/search/bm25", json={"query": "cordless drill", "k": 12.0})
    assert bm25.status_code == 200, bm25.text
    scores = [item["score"] for item in bm25.json()["items"]]
    assert scores and all(score > 0 for score in scores) and scores == sorted(scores, reverse=True)
    assert api.post("/search/bm25", json={"query": "lamp", "user_id": "nobody"}).status_code == 404
    huge = api.post("/search", json={"query": "x" * 100_000})
    assert huge.status_code == 422 and "query" in huge.text and len(huge.text) < 2_000
    wide = api.post("/search", json={"query": "lamp", "k": 20}).json()
    assert wide["beam"] == 32 and len(wide["items"]) == 20  # the model's own beam, and it says so
    assert api.get("/users", params={"limit": -1}).status_code == 422
    pages = [api.get("/users", params={"limit": 15, "offset": o}).json() for o in (0, 15, 30, 45)]
    assert sum(len(page) for page in pages) == 40 and len({u for page in pages for u in page}) == 40


def test_feedback_is_recorded_against_the_impression(api, served):
    from onesearch_ray.rewards.feedback_log import read_feedback

    result = api.post("/search", json={"query": "cordless drill", "k": 3, "beam": 5}).json()
    impression, shown = result["impression_id"], [item["item_id"] for item in result["items"]]
    click = api.post("/feedback", json={"impression_id": impression, "item_id": shown[1], "action": "click"})
    assert click.status_code == 200, click.text
    assert api.post(
        "/feedback", json={"impression_id": impression, "item_id": shown[1], "action": "order"}
    ).is_success
    rows = [r for r in read_feedback(served[1]).to_pylist() if r["impression_id"] == impression]
    assert [(r["item_id"], r["event"]) for r in rows] == [(shown[0], 0), (shown[1], 2), (shown[2], 0)]
    assert rows[0]["query"] == "cordless drill" and rows[0]["model_dir"] == "generator"
    bad = [
        ({"impression_id": "no-such-impression", "item_id": shown[0], "action": "click"}, 404),
        ({"impression_id": impression, "item_id": 987654321, "action": "click"}, 404),
        ({"impression_id": impression, "item_id": shown[0], "action": "like"}, 422),
        ({"impression_id": impression, "action": "click"}, 422),
    ]
    for body, status in bad:
        assert api.post("/feedback", json=body).status_code == status, body


def test_simulated_users_search_and_click_through_http(served, small_track):
    """``onesearch simulate --system NAME=URL``: real /search, then the users' clicks and orders
    go to /feedback and land in the server's own log."""
    from onesearch_ray.rewards.feedback_log import read_feedback
    from onesearch_ray.sim import World, simulate
    from onesearch_ray.sim.config import SimulationConfig
    from onesearch_ray.sim.systems import HttpSystem

    url, log, _ = served
    before = read_feedback(log)
    world = World.from_directory(small_track)
    config = SimulationConfig(searches=32, seed=3, bootstrap=20)
    report = simulate(world, {"live": lambda: HttpSystem("live", url, beam=8, token=TOKEN)}, config)
    after = read_feedback(log)
    new = after.filter(pc.invert(pc.is_in(after["impression_id"], before["impression_id"])))
    assert len(set(new["impression_id"].to_pylist())) == 32  # one impression per simulated search
    events = Counter(new["event"].to_pylist())
    ctr = report["slices"]["all"]["systems"]["live"]["metrics"]["ctr"]["value"]
    assert events[int(Event.CLICKED)] > 0 and ctr > 0


def test_writes_without_the_token_are_refused_off_loopback(api, served):
    impression = api.post("/search", json={"query": "lamp", "k": 1}).json()["impression_id"]
    writes = [
        ("/items", {"items": [{"item_id": 900777, "title": "Unwritten Lamp"}]}),
        ("/feedback", {"impression_id": impression, "item_id": 1, "action": "click"}),
        ("/model", {"model": "generator-untrained"}),
    ]
    for headers in ({}, {"Authorization": "Bearer wrong-token"}):
        with httpx.Client(base_url=served[0], timeout=60, headers=headers) as anonymous:
            for path, body in writes:
                refused = anonymous.post(path, json=body)
                assert refused.status_code == 401 and "token" in refused.json()["detail"], (path, headers)
            assert (
                anonymous.post("/search", json={"query": "lamp", "k": 1}).status_code == 200
            )  # reads stay open
    assert api.get("/items/900777").status_code == 404


def test_concurrent_feedback_loses_nothing_across_a_restart(api, served):
    from ray import serve

    from onesearch_ray.rewards.feedback_log import FeedbackLog

    base, log_path, restart = served
    before = FeedbackLog(log_path).counts()

    def search_and_order(query: str) -> tuple[str, int]:
        result = api.post("/search", json={"query": query, "k": 2, "beam": 4}).json()
        item = result["items"][0]["item_id"]
        for action in ("click", "order"):
            response = api.post(
                "/feedback",
                json={"impression_id": result["impression_id"], "item_id": item, "action": action},
            )
            assert response.status_code == 200, response.text
        return result["impression_id"], item

    queries = [f"{word} {n}" for n in range(6) for word in ("drill", "lamp", "sofa", "kettle")]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        done = list(pool.map(search_and_order, queries))
    after = FeedbackLog(log_path).counts()
    assert {k: after[k] - before[k] for k in after} == {"impressions": 24, "clicks": 24, "orders": 24}

    serve.delete("onesearch")  # a server restart: a new replica on the same log
    assert restart() == base
    assert FeedbackLog(log_path).counts() == after
    impression, item = done[0]  # an impression from before the restart still takes feedback
    assert api.post(
        "/feedback", json={"impression_id": impression, "item_id": item, "action": "click"}
    ).is_success


def test_adds_under_search_load_fail_nothing_and_survive_a_restart(api, served):
    """One writer posts /items while searches run: no search fails, every added item is found first
    for its own title at once, and after a restart (a new replica) every acknowledged item is there."""
    from ray import serve

    base, _, restart = served
    stop, statuses, added = threading.Event(), Counter(), []

    def keep_searching(query: str) -> None:
        while not stop.is_set():
            statuses[api.post("/search", json={"query": query, "k": 10, "beam": 8}).status_code] += 1

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        searchers = [pool.submit(keep_searching, q) for q in ("drill", "lamp", "sofa")]
        for batch in range(6):
            items = [
                {
                    "item_id": 910_000 + 10 * batch + n,
                    "title": f"Quorbel {WORDS[batch]} {WORDS[n]} Zentrix {batch}-{n}",
                }
                for n in range(10)
            ]
            response = api.post("/items", json={"items": items})
            assert response.status_code == 200, response.text
            added += items
        stop.set()
        for searcher in searchers:
            searcher.result()
    assert statuses[200] > 0 and set(statuses) == {200}, statuses

    def found_first(items) -> bool:
        for item in items:
            hits = api.post("/search", json={"query": item["title"], "k": 10}).json()["items"]
            if item["item_id"] not in [hit["item_id"] for hit in hits]:
                return False
        return True

    assert found_first(added)
    serve.delete("onesearch")  # a server restart: a new replica replays the add log
    assert restart() == base
    assert api.get("/healthz").json()["items"] >= len(added)
    assert all(api.get(f"/items/{item['item_id']}").status_code == 200 for item in added)
    assert found_first(added)


WORDS = ["walnut", "copper", "linen", "granite", "velvet", "cobalt", "maple", "bronze", "ivory", "slate"]


def test_a_server_without_a_token_takes_writes_from_loopback_only(served, generator_small_run, tmp_path):
    """The app built directly (as `serve run` does, no launcher), listening on 0.0.0.0 with no token:
    a write from another host is refused (403), one from loopback is taken."""
    import psutil
    from ray import serve

    from serve_apps.search_app import build_app

    addresses = [
        a.address for nic in psutil.net_if_addrs().values() for a in nic if a.family == socket.AF_INET
    ]
    outside = next((ip for ip in addresses if not ip.startswith("127.")), None)
    if outside is None:
        pytest.skip("this machine has no address beyond loopback")
    port = served[0].rsplit(":", 1)[1]
    run = tmp_path / "run"
    shutil.copytree(generator_small_run, run)
    serve.run(
        build_app({"run": str(run), "engine": "transformers", "held_out": "false"}),
        name="tokenless",
        route_prefix="/tokenless",
    )
    try:
        item = {"items": [{"item_id": 920_001, "title": "Loopback Only Lamp"}]}
        with httpx.Client(timeout=60) as client:
            refused = client.post(f"http://{outside}:{port}/tokenless/items", json=item)
            assert refused.status_code == 403 and "write token" in refused.json()["detail"]
            assert client.post(f"http://{outside}:{port}/tokenless/search", json={"query": "lamp"}).is_success
            taken = client.post(f"http://127.0.0.1:{port}/tokenless/items", json=item)
            assert taken.status_code == 200, taken.text
    finally:
        serve.delete("tokenless")


def _wait_until(condition, timeout_s: float = 120.0) -> None:

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_model_swap_under_load_fails_no_request(api):
    import threading

    assert api.get("/models").json() == {
        "model": "generator",
        "available": ["generator", "generator-untrained"],
    }
    stop, statuses = threading.Event(), []

    def keep_searching(query: str) -> None:
        while not stop.is_set():
            statuses.append(api.post("/search", json={"query": query, "k": 3, "beam": 5}).status_code)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        searchers = [pool.submit(keep_searching, query) for query in ("drill", "lamp", "sofa", "kettle")]
        try:
            _wait_until(lambda: len(statuses) >= 4)  # under load before the swap...
            for model in ("generator-untrained", "generator"):
                swapped = api.post("/model", json={"model": model})
                assert swapped.status_code == 200, swapped.text
                assert swapped.json()["model"] == model
                health = api.get("/healthz").json()
                assert health["model"] == model, health
            answered = len(statuses)
            _wait_until(lambda: len(statuses) >= answered + 4)  # ...and after it
        finally:
            stop.set()
        for searcher in searchers:
            searcher.result()  # a transport error in a searcher fails the test here
    assert set(statuses) == {200}, statuses
    missing = api.post("/model", json={"model": "../../etc"})
    assert missing.status_code == 404 and "generator-untrained" in missing.json()["detail"]


@pytest.mark.slow
def test_schemathesis_finds_no_contract_violation(api, served, tmp_path):
    """Every route of the served OpenAPI document, with every check, tried as a new user would."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    command = [st, "run", f"{served[0]}/openapi.json", "--checks", "all", "--max-examples", "20"]
    command += ["--seed", "7", "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "120"]
    # `--checks all` would hold every answer to 10 s: a model swap loads a model (seconds, more on a
    # busy 2-core machine); the contract is the statuses and bodies, not the time
    command += ["--max-response-time", "120"]
    command += ["--no-color"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_sigterm_stops_servers_like_ctrl_c():
    """`kill` reaches the servers' KeyboardInterrupt shutdown path (Serve shutdown, demo close)."""
    import os
    import signal

    from onesearch_cli.main import _stop_on_sigterm

    previous = signal.getsignal(signal.SIGTERM)
    try:
        _stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # interrupted at once by the handler
    finally:
        signal.signal(signal.SIGTERM, previous)
