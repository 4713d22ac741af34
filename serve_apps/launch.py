"""Start the search API on a Ray cluster (local unless RAY_ADDRESS is set) and keep it running."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from ray import serve

from onesearch_ray.io import atomic_path
from pipelines.common import init_ray, wait_for_interrupt
from serve_apps.search_app import TOKEN_ENV, build_app, is_loopback

log = logging.getLogger("onesearch.serve")
TOKEN_FILE = "serve/write_token"  # under the run: the token made for a server bound beyond loopback


def write_token_for(run: str | Path, host: str, token: str | None = None) -> str | None:
    """The token write routes require: ``token``, else $ONESEARCH_WRITE_TOKEN; off loopback, with
    neither, the one in RUN/serve/write_token, made (owner-only) on first use. On loopback none is
    needed."""
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is not None or is_loopback(host):
        return token
    path = Path(run) / TOKEN_FILE
    if not path.is_file():
        with atomic_path(path) as tmp:
            tmp.chmod(0o600)
            tmp.write_text(secrets.token_urlsafe(24) + "\n")
    token = path.read_text().strip()
    print(f"write token (for /items, /feedback, POST /model): {path}", flush=True)
    return token


def start(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = "vllm",
    data: str | None = None,
    blocking: bool = True,
    write_token: str | None = None,
    feedback_log: str | Path | None = None,
    held_out: bool = True,
    shards: int = 1,
) -> str:
    """Deploy the app; returns its base URL. ``blocking`` keeps serving until interrupted, then tears
    the app down and re-raises the KeyboardInterrupt (the CLI's exit status 130).

    ``write_token``: see :func:`write_token_for`. ``feedback_log``: default RUN/feedback.sqlite.
    ``held_out``: a run's cold-start hold-out joins the served catalogue live at start.
    ``shards``: how many shard deployments hold and score the item rows (1: the search deployment).
    """
    token = write_token_for(run, host, write_token)
    init_ray()
    try:
        serve.start(http_options={"host": host, "port": port})
    except RuntimeError as err:  # Ray's proxy failed to start, a traceback deep in Ray
        if "Failed to bind" not in str(err):
            raise
        raise ValueError(f"{host}:{port} is in use: stop what holds it, or serve on another --port") from None
    args = {
        "run": str(run),
        "engine": engine,
        "data": data,
        "write_token": token,
        "held_out": held_out,
        "shards": shards,
    }
    if feedback_log is not None:
        args["feedback_log"] = str(feedback_log)
    serve.run(build_app(args), name="onesearch", route_prefix="/")
    url = f"http://{host}:{port}"
    print(f"search API: {url}/search  (docs: {url}/docs, health: {url}/healthz)", flush=True)
    if blocking:
        try:
            wait_for_interrupt()
        finally:
            stop()
    return url


def stop() -> None:
    """Tear the app down; a Ray cluster this process started ends with the process."""
    serve.shutdown()
