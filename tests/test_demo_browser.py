"""The Gradio demo in a real headless Chromium, against the real search API (Ray Serve + transformers).

Needs Debian's chromium and the `playwright` package: `bash scripts/setup_browser.sh`.
The screenshot goes to the test's tmp dir; docs/demo.png comes from ``python -m demo.screenshot``.
"""

from __future__ import annotations

import os
import re
import time

import httpx
import pytest

from demo.screenshot import CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, column
from tests.ray_jobs import free_port

K, BEAM = 8, 16

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason=f"{CHROMIUM} missing: run `bash scripts/setup_browser.sh`"
    ),
]
# Skip the module (before the fixtures train a model) when the Python driver is missing.
sync_api = pytest.importorskip("playwright.sync_api", reason="run `bash scripts/setup_browser.sh`")


def _wait_healthy(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"search API at {url} not healthy after {timeout_s}s")
        time.sleep(0.5)


@pytest.fixture
def search_api(ray_cluster, generator_small_run):
    from ray import serve

    from serve_apps.launch import start

    url = start(
        generator_small_run, host="127.0.0.1", port=free_port(), engine="transformers", blocking=False
    )
    try:
        _wait_healthy(url)
        yield url
    finally:
        serve.shutdown()


@pytest.fixture
def demo_url(search_api):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from demo.app import build_demo

    demo = build_demo(search_api)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_demo_search_in_browser(search_api, demo_url, generator_small_run, tmp_path, monkeypatch):
    expect = sync_api.expect

    # A user with some history, and one of their own queries (so BM25 surely matches something).
    with httpx.Client(base_url=search_api, timeout=120) as client:
        all_users = client.get("/users", params={"limit": 1000}).json()
        summaries = [client.get(f"/users/{u}").json() for u in all_users[:20]]
        user = next(s for s in summaries if s["recent_items"] and s["recent_queries"])
        query = user["recent_queries"][0]
        body = {"query": query, "user_id": user["user_id"], "k": K, "beam": BEAM}
        expected_generative = client.post("/search", json=body).json()["items"]
        expected_bm25 = client.post("/search/bm25", json=body).json()["items"]
    assert expected_generative and expected_bm25

    import demo.app

    monkeypatch.setattr(demo.app, "USERS_PAGE", 7)  # the picker pages through every user
    assert demo.app.SearchApi(search_api).users() == all_users and len(all_users) == 40

    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1600, "height": 1000},
        )
        try:
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(demo_url)
            expect(page.locator("#status")).to_contain_text("Connected to", timeout=TIMEOUT_MS)

            page.locator("#query input").fill(query)
            page.locator("#user-picker input").click()
            page.locator("#user-picker input").fill(user["user_id"])  # the dropdown filters as you type
            page.get_by_role("option", name=user["user_id"], exact=True).click()
            for elem_id, value in (("k", K), ("beam", BEAM)):
                number = page.locator(f"#{elem_id} input[type=number]")
                number.fill(str(value))
                number.press("Enter")

            # The user's recent behaviour: their queries and clicked items (title + SID).
            history = page.locator("#user-history")
            expect(history).to_contain_text(f"User {user['user_id']}", timeout=TIMEOUT_MS)
            expect(history).to_contain_text("Recently clicked items")
            expect(history).to_contain_text(user["recent_items"][0]["title"])
            expect(history).to_contain_text(user["recent_items"][0]["sid"])

            page.locator("#search-btn").click()
            expect(page.locator("#status")).to_contain_text(
                f"OneSearch: {len(expected_generative)} items", timeout=TIMEOUT_MS
            )
            expect(page.locator("#status")).to_contain_text(f"BM25: {len(expected_bm25)} items")
            expect(page.locator("#results-onesearch [role=gridcell][data-col='1']").first).to_have_text(
                expected_generative[0]["title"]
            )
            expect(page.locator("#results-bm25 [role=gridcell][data-col='1']").first).to_have_text(
                expected_bm25[0]["title"]
            )

            generative_titles = column(page, "results-onesearch", 1)
            generative_sids = column(page, "results-onesearch", 2)
            bm25_titles = column(page, "results-bm25", 1)
            assert len(generative_titles) == len(expected_generative) and all(generative_titles)
            assert all(sid.startswith("<a_") for sid in generative_sids)
            assert bm25_titles == [item["title"] for item in expected_bm25]
            assert column(page, "results-onesearch", 0)[:3] == ["1", "2", "3"][: len(generative_titles)]

            # The loop made visible: order the first OneSearch result; it lands in the feedback log.
            expect(page.locator("#feedback-item input")).to_have_value(re.compile(r"^OneSearch #1: "))
            page.locator("#order-btn").click()
            expect(page.locator("#feedback-status")).to_contain_text(
                f"Recorded order on item {expected_generative[0]['item_id']}", timeout=TIMEOUT_MS
            )

            shot = tmp_path / "demo.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            context.close()
    from onesearch_ray.rewards.feedback_log import read_feedback

    ordered = [
        r for r in read_feedback(generator_small_run / "feedback.sqlite").to_pylist() if r["event"] == 2
    ]
    assert [r["item_id"] for r in ordered][-1:] == [expected_generative[0]["item_id"]]
