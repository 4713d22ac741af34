"""Ray Serve application: the generative search API around ``onesearch_ray.serving.SearchService``.

Endpoints: ``POST /search``, ``POST /search/bm25`` (baseline), ``POST /feedback`` (clicks and orders
on an impression), ``POST /items`` (live catalogue update), ``GET /items/{id}``, ``GET /users``,
``GET /users/{id}``, ``GET /models`` (which model serves), ``POST /model`` (swap it live),
``GET /healthz``; OpenAPI at ``/docs`` and ``/openapi.json``, every status a route returns declared there.
Concurrent ``/search`` requests are batched (``@serve.batch``) into one beam search call per beam width.

Routes that change state (``/items``, ``/feedback``, ``POST /model``) take ``Authorization: Bearer
TOKEN`` when the server has a write token (``launch.start`` always makes one when it binds beyond
loopback). Without a token, the app itself refuses writes that come from beyond loopback (403),
however it was started (``serve run`` with a config listening on 0.0.0.0 included).

    onesearch serve --run RUN --port 8000                 # binds 127.0.0.1 unless --host says otherwise
    serve run serve_apps/serve_config.yaml                # the same app from a Serve config file
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from ray import serve
from ray.serve.handle import DeploymentHandle

from onesearch_ray.rewards.feedback_log import FeedbackLog
from onesearch_ray.runs import model_name, served_model_dir
from onesearch_ray.serving.schemas import (
    MAX_ITEM_ID,
    MAX_USERS_PAGE,
    TOKEN_ENV,
    AddItemsRequest,
    AddItemsResponse,
    ErrorDetail,
    FeedbackRequest,
    FeedbackResponse,
    Health,
    Item,
    ModelInfo,
    ModelSwapRequest,
    SearchRequest,
    SearchResponse,
    UserSummary,
)
from onesearch_ray.serving.service import ADD_LOG, ConflictError, NotFoundError, SearchService
from serve_apps.shard_app import HandleShard, shard_deployments

log = logging.getLogger("onesearch.serve")
api = FastAPI(title="OneSearch-Ray", description="End-to-end generative e-commerce search", version="0.2.0")
bearer = HTTPBearer(auto_error=False, description="the server's write token (required off loopback)")
WriteCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]
MAX_ECHOED_INPUT = 200  # characters of a refused input a 422 repeats back


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    reasons = {
        400: "the body is not JSON text (e.g. bytes that are not UTF-8)",
        401: "no or wrong write token",
        403: "a write from beyond loopback to a server that has no write token",
        404: "names something unknown",
        409: "conflicts with what exists",
    }
    return {status: {"model": ErrorDetail, "description": reasons[status]} for status in statuses}


def _http_error(err: Exception) -> HTTPException:
    if isinstance(err, NotFoundError):
        return HTTPException(404, str(err))
    if isinstance(err, ConflictError):
        return HTTPException(409, str(err))
    return HTTPException(500, "internal error")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve anywhere
        return False


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, with each refused input cut short: a 100k-character query is not echoed back."""
    errors = []
    for error in jsonable_encoder(exc.errors()):
        shown = repr(error.get("input"))
        if len(shown) > MAX_ECHOED_INPUT:
            error["input"] = f"{shown[:MAX_ECHOED_INPUT]}... ({len(shown)} characters)"
        errors.append(error)
    return JSONResponse(status_code=422, content={"detail": errors})


@serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
@serve.ingress(api)
class SearchDeployment:
    def __init__(
        self,
        run: str,
        engine: str = "vllm",
        data: str | None = None,
        write_token: str | None = None,
        feedback_log: str | None = None,
        held_out: bool = True,
        shards: list[DeploymentHandle] | None = None,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        log_path = Path(feedback_log) if feedback_log else Path(run) / "feedback.sqlite"
        self.service = SearchService(
            run,
            engine,
            data,
            feedback_log=FeedbackLog(log_path),
            add_log=Path(run) / ADD_LOG,
            shards=[HandleShard(handle) for handle in shards or []],
        )
        if held_out:  # the whole catalogue is served: a cold-start hold-out joins as new items
            self.service.add_held_out()
        self.write_token = write_token or os.environ.get(TOKEN_ENV) or None
        api.openapi_schema = None
        api.openapi = self._openapi_document

    def _openapi_document(self) -> dict[str, Any]:
        """The OpenAPI document of this server: with a write token, writes answer 401 without it; with
        none, the bearer scheme is dropped (nothing checks it) and writes from beyond loopback get 403."""
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, description=api.description, routes=api.routes
            )
            if self.write_token is None:
                schema.get("components", {}).pop("securitySchemes", None)
            for operations in schema["paths"].values():
                for operation in operations.values():
                    if self.write_token is None:
                        operation.pop("security", None)
                    operation.get("responses", {}).pop("401" if self.write_token is None else "403", None)
            api.openapi_schema = schema
        return api.openapi_schema

    def _authorize(self, request: Request, credentials: HTTPAuthorizationCredentials | None) -> None:
        if self.write_token is None:
            client = request.client.host if request.client else ""
            if not is_loopback(client):
                raise HTTPException(
                    403,
                    f"writes from {client or 'an unknown host'} need a server write token: start the server "
                    f"with write_token= or ${TOKEN_ENV} (without one it takes writes from loopback only)",
                )
            return
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), self.write_token.encode()):
            raise HTTPException(
                401,
                "this route needs the server's write token: Authorization: Bearer TOKEN",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _search_batch(self, requests: list[SearchRequest]) -> list[SearchResponse | Exception]:
        return await asyncio.to_thread(self.service.search, requests)

    @api.post("/search", response_model=SearchResponse, responses=_responses(400, 404))
    async def search(self, body: SearchRequest) -> SearchResponse:
        try:
            result = await self._search_batch(body)
        except NotFoundError as err:  # serve.batch re-raises a slot's exception
            raise _http_error(err) from None
        if isinstance(result, Exception):
            raise _http_error(result)
        return result

    @api.post("/search/bm25", response_model=SearchResponse, responses=_responses(400, 404))
    async def search_bm25(self, body: SearchRequest) -> SearchResponse:
        try:
            return await asyncio.to_thread(self.service.bm25, body)
        except NotFoundError as err:
            raise _http_error(err) from None

    @api.post("/feedback", response_model=FeedbackResponse, responses=_responses(400, 401, 403, 404))
    async def feedback(
        self, body: FeedbackRequest, request: Request, credentials: WriteCredentials = None
    ) -> FeedbackResponse:
        self._authorize(request, credentials)
        try:
            return await asyncio.to_thread(self.service.record_feedback, body)
        except NotFoundError as err:
            raise _http_error(err) from None

    @api.post("/items", response_model=AddItemsResponse, responses=_responses(400, 401, 403, 409))
    async def add_items(
        self, body: AddItemsRequest, request: Request, credentials: WriteCredentials = None
    ) -> AddItemsResponse:
        self._authorize(request, credentials)
        try:
            return await asyncio.to_thread(self.service.add_items, body)
        except ConflictError as err:
            raise _http_error(err) from None

    @api.get("/items/{item_id}", response_model=Item, responses=_responses(404))
    async def item(self, item_id: Annotated[int, PathParam(ge=0, le=MAX_ITEM_ID)]) -> Item:
        try:
            return self.service.item(item_id)
        except NotFoundError as err:
            raise _http_error(err) from None

    @api.get("/users", response_model=list[str])
    async def users(
        self,
        limit: int = Query(50, ge=1, le=MAX_USERS_PAGE, description="users per page"),
        offset: int = Query(0, ge=0, description="users to skip (page through all with limit + offset)"),
    ) -> list[str]:
        return self.service.users(limit, offset)

    @api.get("/users/{user_id}", response_model=UserSummary, responses=_responses(404))
    async def user(self, user_id: str) -> UserSummary:
        try:
            return self.service.user_summary(user_id)
        except NotFoundError as err:
            raise _http_error(err) from None

    @api.get("/models", response_model=ModelInfo)
    async def models(self) -> ModelInfo:
        return ModelInfo(model=self.service.model_name, available=self.service.available_models())

    @api.post("/model", response_model=ModelInfo, responses=_responses(400, 401, 403, 404))
    async def swap_model(
        self, body: ModelSwapRequest, request: Request, credentials: WriteCredentials = None
    ) -> ModelInfo:
        """Serve another model of this run; searches in flight finish on the model they started with."""
        self._authorize(request, credentials)
        try:
            return await asyncio.to_thread(self.service.swap_model, body.model)
        except NotFoundError as err:
            raise _http_error(err) from None

    @api.get("/healthz", response_model=Health)
    async def healthz(self) -> Health:
        return Health(
            status="ok",
            items=self.service.n_items,
            trie_version=self.service.catalogue_version,
            model=self.service.model_name,
        )


def build_app(args: dict) -> serve.Application:
    """``serve run serve_apps.search_app:build_app run=RUN [engine=vllm] [data=DIR] [feedback_log=PATH]
    [held_out=false] [shards=N]``; the write token comes from ``write_token=`` or the
    ONESEARCH_WRITE_TOKEN environment variable. ``held_out=false`` leaves a run's cold-start hold-out
    out of the catalogue; ``shards=N`` (N >= 2) puts the trained item rows in N shard deployments
    (``serve_apps.shard_app``) that score them, one replica each."""
    if "run" not in args:
        raise ValueError("search app: the `run` argument (a trained run directory) is required")
    run = Path(args["run"]).resolve()
    n_shards = int(args.get("shards") or 1)
    if n_shards < 1:
        raise ValueError(f"search app: shards={n_shards}, it must be at least 1")
    model = model_name(run, served_model_dir(run))
    return SearchDeployment.bind(
        str(run),
        args.get("engine", "vllm"),
        args.get("data"),
        args.get("write_token"),
        args.get("feedback_log"),
        str(args.get("held_out", True)).lower() not in ("false", "0", "no"),
        shard_deployments(str(run), model, n_shards) if n_shards > 1 else None,
    )
