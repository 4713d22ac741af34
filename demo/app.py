"""Gradio demo page for the OneSearch search API.

The page knows the HTTP API only (``POST /search``, ``POST /search/bm25``, ``POST /feedback``,
``GET /users``, ``GET /users/{id}``), never the library, so it can point at any running
``onesearch serve``:

    onesearch demo --api http://127.0.0.1:8000 --port 7860 [--write-token-file FILE]

A person can click or order a result: it goes to ``POST /feedback`` against the search's impression,
the log the next DPO round trains from (the reward loop, made visible).

Stable element ids for browser tests: ``query``, ``search-btn``, ``user-picker``, ``k``, ``beam``,
``user-history``, ``status``, ``results-onesearch``, ``results-bm25``, ``feedback-item``,
``click-btn``, ``order-btn``, ``feedback-status``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import gradio as gr
import httpx
import pandas as pd

ANONYMOUS = "anonymous"
GENERATIVE_COLUMNS = ["rank", "title", "SID", "score"]
BM25_COLUMNS = ["rank", "title"]
USERS_PAGE = 1000  # the API's largest page; the picker pages through every user


class ApiError(Exception):
    """A failed API call, with a message fit to show on the page."""


class SearchApi:
    """A tiny client for the search API; every failure becomes an ``ApiError``."""

    def __init__(self, base_url: str, timeout: float = 60.0, write_token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {write_token}"} if write_token else {}
        self.client = httpx.Client(base_url=self.base_url, timeout=timeout, headers=headers)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as err:  # connection refused, DNS, timeouts
            raise ApiError(f"Search API unreachable at {self.base_url} ({type(err).__name__}).") from None
        if response.is_success:
            return response.json()
        raise ApiError(f"API error {response.status_code}: {_detail(response)}")

    def users(self) -> list[str]:
        """Every user, a page at a time."""
        users: list[str] = []
        while True:
            page = self._call("GET", "/users", params={"limit": USERS_PAGE, "offset": len(users)})
            users += page
            if len(page) < USERS_PAGE:
                return users

    def feedback(self, impression_id: str, item_id: int, action: str) -> dict:
        body = {"impression_id": impression_id, "item_id": item_id, "action": action}
        return self._call("POST", "/feedback", json=body)

    def user(self, user_id: str) -> dict:
        return self._call("GET", f"/users/{quote(user_id, safe='')}")

    def search(self, body: dict, bm25: bool = False) -> dict:
        return self._call("POST", "/search/bm25" if bm25 else "/search", json=body)


def _detail(response: httpx.Response) -> str:
    """FastAPI's ``detail``: a string, or a list of validation errors (``loc`` + ``msg``)."""
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text or response.reason_phrase
    if isinstance(detail, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', [])[1:]) or 'request'}: {e.get('msg', e)}"
            if isinstance(e, dict)
            else str(e)
            for e in detail
        )
    return str(detail)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _user_markdown(summary: dict) -> str:
    lines = [f"**User `{summary['user_id']}`**", "", "Recent queries (newest first):"]
    queries = summary.get("recent_queries") or []
    lines += [f"- {_cell(q)}" for q in queries] or ["- _none_"]
    items = summary.get("recent_items") or []
    lines += ["", "Recently clicked items (newest first):", ""]
    if items:
        lines += ["| item | title | SID |", "|---|---|---|"]
        lines += [f"| {it['item_id']} | {_cell(it['title'])} | `{it['sid']}` |" for it in items]
    else:
        lines.append("_none_")
    return "\n".join(lines)


def _generative_table(items: list[dict]) -> pd.DataFrame:
    rows = [[r, it["title"], it["sid"], round(float(it["score"]), 4)] for r, it in enumerate(items, 1)]
    return pd.DataFrame(rows, columns=GENERATIVE_COLUMNS)


def _bm25_table(items: list[dict]) -> pd.DataFrame:
    return pd.DataFrame([[r, it["title"]] for r, it in enumerate(items, 1)], columns=BM25_COLUMNS)


def _feedback_choices(result: dict, system: str) -> list[tuple[str, str]]:
    """Dropdown entries (label, "impression_id item_id") for the results of one search."""
    impression = result.get("impression_id")
    if not impression:
        return []
    return [
        (f"{system} #{rank}: {item['title']}", f"{impression} {item['item_id']}")
        for rank, item in enumerate(result["items"], 1)
    ]


def build_demo(api_url: str, write_token: str | None = None) -> gr.Blocks:
    api = SearchApi(api_url, write_token=write_token)

    def load_users():
        try:
            users = api.users()
        except ApiError as err:
            return gr.Dropdown(choices=[ANONYMOUS], value=ANONYMOUS), f"⚠️ {err}"
        return gr.Dropdown(choices=[ANONYMOUS, *users], value=ANONYMOUS), f"Connected to {api.base_url}."

    def show_user(user: str | None) -> str:
        if not user or user == ANONYMOUS:
            return "**Anonymous**: no behaviour history, results are not personalised."
        try:
            return _user_markdown(api.user(user))
        except ApiError as err:
            return f"⚠️ {err}"

    def search(query: str, user: str | None, k: float, beam: float):
        body = {
            "query": query or "",
            "user_id": None if not user or user == ANONYMOUS else user,
            "k": int(k),
            "beam": int(beam),
        }
        messages, choices = [], []
        generative, bm25 = _generative_table([]), _bm25_table([])
        try:
            result = api.search(body)
            generative = _generative_table(result["items"])
            choices += _feedback_choices(result, "OneSearch")
            messages.append(
                f"OneSearch: {len(result['items'])} items in {result['timing_ms']:.0f} ms "
                f"(beam {result['beam']}, trie v{result['trie_version']})"
            )
        except ApiError as err:
            messages.append(f"⚠️ OneSearch: {err}")
        try:
            result = api.search(body, bm25=True)
            bm25 = _bm25_table(result["items"])
            choices += _feedback_choices(result, "BM25")
            messages.append(f"BM25: {len(bm25)} items")
        except ApiError as err:
            messages.append(f"⚠️ BM25: {err}")
        picker = gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)
        return generative, bm25, " · ".join(messages), picker

    def send_feedback(choice: str | None, action: str) -> str:
        if not choice:
            return "Search first, then pick a result to click or order."
        impression, item_id = choice.rsplit(" ", 1)
        try:
            event = api.feedback(impression, int(item_id), action)
        except ApiError as err:
            return f"⚠️ {err}"
        return f"Recorded {action} on item {event['item_id']} (event {event['event_id']})."

    with gr.Blocks(title="OneSearch-Ray demo") as demo:
        gr.Markdown(f"# OneSearch-Ray: generative e-commerce search\nAPI: `{api.base_url}`")
        with gr.Row():
            query = gr.Textbox(
                label="Query", placeholder="e.g. wireless earbuds", scale=4, elem_id="query", max_lines=1
            )
            button = gr.Button("Search", variant="primary", scale=1, elem_id="search-btn")
        with gr.Row():
            with gr.Column(scale=1):
                user = gr.Dropdown(
                    choices=[ANONYMOUS], value=ANONYMOUS, label="User", elem_id="user-picker", filterable=True
                )
                k = gr.Slider(1, 50, value=10, step=1, label="k (results)", elem_id="k")
                beam = gr.Slider(1, 200, value=50, step=1, label="beam width", elem_id="beam")
            with gr.Column(scale=2):
                history = gr.Markdown(show_user(ANONYMOUS), elem_id="user-history")
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            generative = gr.Dataframe(
                _generative_table([]),
                label="OneSearch (generative)",
                interactive=False,
                wrap=True,
                column_widths=["8%", "50%", "30%", "12%"],
                scale=3,
                max_height=700,
                elem_id="results-onesearch",
            )
            bm25 = gr.Dataframe(
                _bm25_table([]),
                label="BM25 baseline",
                interactive=False,
                wrap=True,
                column_widths=["12%", "88%"],
                scale=2,
                max_height=700,
                elem_id="results-bm25",
            )

        with gr.Row():
            feedback_item = gr.Dropdown(
                choices=[], label="Act on a result (goes to POST /feedback)", scale=4, elem_id="feedback-item"
            )
            click = gr.Button("Click", scale=1, elem_id="click-btn")
            order = gr.Button("Order", variant="secondary", scale=1, elem_id="order-btn")
        feedback_status = gr.Markdown("", elem_id="feedback-status")

        demo.load(load_users, outputs=[user, status])
        user.change(show_user, inputs=user, outputs=history)
        for trigger in (button.click, query.submit):
            trigger(search, inputs=[query, user, k, beam], outputs=[generative, bm25, status, feedback_item])
        click.click(
            lambda choice: send_feedback(choice, "click"), inputs=feedback_item, outputs=feedback_status
        )
        order.click(
            lambda choice: send_feedback(choice, "order"), inputs=feedback_item, outputs=feedback_status
        )
    return demo


def launch(api_url: str, host: str = "127.0.0.1", port: int = 7860, write_token: str | None = None) -> None:
    """Serve the demo page until Ctrl-C, whose KeyboardInterrupt it raises (the CLI's exit status 130)."""
    build_demo(api_url, write_token).launch(server_name=host, server_port=port)
    raise KeyboardInterrupt  # Gradio's launch returns once it has caught the Ctrl-C and closed the page
