"""The demo page in a headless Chromium: one search typed in, its results read back and shot.

Reads what a person sees (the page's own tables, not the API) and saves a full-page screenshot; the
browser test (``tests/test_demo_browser.py``) drives the page with the same browser settings. Needs
Debian's chromium and ``playwright`` (``bash scripts/setup_browser.sh``) and a running search API:

    python -m demo.screenshot --api http://127.0.0.1:8000 --query "brown blanket king" --out docs/demo.png
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 120_000


def column(page, elem_id: str, col: int) -> list[str]:
    """The text of one column of a Gradio 6 Dataframe (its body cells are role=gridcell with data-col)."""
    cells = page.locator(f"#{elem_id} [role=gridcell][data-col='{col}']").all_inner_texts()
    return [text.strip() for text in cells]


def shoot(api_url: str, query: str, out: Path, k: int = 10) -> dict[str, list[str]]:
    """Search ``query`` on the demo page of ``api_url``; the titles each table shows, best first."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import expect, sync_playwright

    from demo.app import build_demo

    page_port = _free_port()
    demo = build_demo(api_url)
    demo.launch(server_name="127.0.0.1", server_port=page_port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright, tempfile.TemporaryDirectory() as profile:
            context = playwright.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1600, "height": 1000},
            )
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"http://127.0.0.1:{page_port}")
            expect(page.locator("#status")).to_contain_text("Connected to")
            page.locator("#query input").fill(query)
            number = page.locator("#k input[type=number]")
            number.fill(str(k))
            number.press("Enter")
            page.locator("#search-btn").click()
            expect(page.locator("#status")).to_contain_text("BM25:")
            titles = {name: column(page, f"results-{name}", 1) for name in ("onesearch", "bm25")}
            page.screenshot(path=str(out), full_page=True)
            context.close()
    finally:
        demo.close()
    return titles


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api", required=True, help="the search API's URL")
    parser.add_argument("--query", required=True)
    parser.add_argument("--out", type=Path, required=True, help="the screenshot (PNG)")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    for name, titles in shoot(args.api, args.query, args.out, args.k).items():
        print(f"{name}: " + " | ".join(titles))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
