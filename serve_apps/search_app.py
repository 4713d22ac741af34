"""Ray Serve application: the generative search API around ``onesearch_ray.serving.SearchService``.

Endpoints: ``POST /search``, ``POST /search/bm25`` (baseline), ``POST /items`` (live catalogue
update), ``GET /users``, ``GET /users/{user_id}``, ``GET /healthz``; OpenAPI at ``/docs`` and
``/openapi.json``. Concurrent ``/search`` requests are batched (``@serve.batch``) into one beam
search call per beam width. Bad input gets a 4xx naming the problem, never a 500.

    onesearch serve --run RUN --port 8000                 # binds 127.0.0.1 unless --host says otherwise
    serve run serve_apps/serve_config.yaml                # the same app from a Serve config file
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from ray import serve

from onesearch_ray.serving.engines import make_engine
from onesearch_ray.serving.schemas import (
    MAX_K,
    AddItemsRequest,
    AddItemsResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UserSummary,
)
from onesearch_ray.serving.service import BadRequestError, SearchService, UnknownUserError

log = logging.getLogger("onesearch.serve")
api = FastAPI(title="OneSearch-Ray", description="End-to-end generative e-commerce search", version="0.1.0")


def _http_error(err: Exception) -> HTTPException:
    if isinstance(err, UnknownUserError):
        return HTTPException(404, err.args[0] if err.args else str(err))
    if isinstance(err, BadRequestError):
        return HTTPException(422, str(err))
    return HTTPException(500, "internal error")


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class SearchDeployment:
    def __init__(self, run: str, engine: str = "vllm", data: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.service = SearchService(run, make_engine(engine), data)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _search_batch(self, requests: list[SearchRequest]) -> list[SearchResponse | Exception]:
        return await asyncio.to_thread(self.service.search, requests)

    @api.post("/search", response_model=SearchResponse)
    async def search(self, body: SearchRequest) -> SearchResponse:
        try:
            result = await self._search_batch(body)
        except (UnknownUserError, BadRequestError) as err:  # serve.batch re-raises a slot's exception
            raise _http_error(err) from None
        if isinstance(result, Exception):
            raise _http_error(result)
        return result

    @api.post("/search/bm25", response_model=SearchResponse)
    async def search_bm25(self, body: SearchRequest) -> SearchResponse:
        hits = await asyncio.to_thread(self.service.bm25, body.query, min(body.k, MAX_K))
        return SearchResponse(items=hits, timing_ms=0.0, trie_version=self.service.trie.version)

    @api.post("/items", response_model=AddItemsResponse)
    async def add_items(self, body: AddItemsRequest) -> AddItemsResponse:
        try:
            return await asyncio.to_thread(self.service.add_items, body)
        except BadRequestError as err:
            raise _http_error(err) from None

    @api.get("/users", response_model=list[str])
    async def users(self, limit: int = 50) -> list[str]:
        return self.service.users(max(1, min(limit, 1000)))

    @api.get("/users/{user_id}", response_model=UserSummary)
    async def user(self, user_id: str) -> UserSummary:
        try:
            return self.service.user_summary(user_id)
        except UnknownUserError as err:
            raise _http_error(err) from None

    @api.get("/items/{item_id}", response_model=SearchHit)
    async def item(self, item_id: int) -> SearchHit:
        if item_id not in self.service.catalogue.titles:
            raise HTTPException(404, f"unknown item_id {item_id}")
        return self.service.catalogue.hit(item_id, 0.0, self.service._sid_of(item_id))

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        return JSONResponse(
            {"status": "ok", "items": self.service.sids.n_items, "trie_version": self.service.trie.version}
        )


def build_app(args: dict) -> serve.Application:
    """``serve run serve_apps.search_app:build_app run=RUN [engine=vllm] [data=DIR]``."""
    if "run" not in args:
        raise ValueError("search app: the `run` argument (a trained run directory) is required")
    return SearchDeployment.bind(
        str(Path(args["run"]).resolve()), args.get("engine", "vllm"), args.get("data")
    )
