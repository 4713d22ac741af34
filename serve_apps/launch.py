"""Start the search API on a Ray cluster (local unless RAY_ADDRESS is set) and keep it running."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ray import serve

from pipelines.common import init_ray
from serve_apps.search_app import build_app

log = logging.getLogger("onesearch.serve")


def start(
    run: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = "vllm",
    data: str | None = None,
    blocking: bool = True,
) -> str:
    """Deploy the app; returns its base URL. ``blocking`` keeps serving until interrupted."""
    init_ray()
    serve.start(http_options={"host": host, "port": port})
    serve.run(
        build_app({"run": str(run), "engine": engine, "data": data}), name="onesearch", route_prefix="/"
    )
    url = f"http://{host}:{port}"
    print(f"search API: {url}/search  (docs: {url}/docs, health: {url}/healthz)", flush=True)
    if blocking:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            stop()
    return url


def stop() -> None:
    """Tear the app down; a Ray cluster this process started ends with the process."""
    serve.shutdown()
