"""The systems an A/B simulation compares, behind one small interface: requests -> ranked item ids.

- ``CascadeSystem``: the cascade stand-in of docs/evaluation.md, BM25 + dense (MiniLM) fused by RRF
  (k=60, depth 1000), then (``RerankConfig``) a personalised re-rank of the top candidates that
  boosts items sharing category, brand or colour with the user's history;
- ``ServiceSystem``: a trained model as ``/search`` serves it (``SearchService``, any engine);
- ``RandomSystem`` and ``OracleSystem``: the floor and the ceiling (ranking by the known relevance,
  then the known user's preferences), which check that the harness measures what it says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from onesearch_ray.khqe.encoder import TextEncoder
from onesearch_ray.retrieval.baselines import RRF_DEPTH, RRF_K, BM25Retriever, DenseRetriever, rrf_fuse
from onesearch_ray.sim.config import DEFAULT_RERANK, RerankConfig
from onesearch_ray.sim.world import World

if TYPE_CHECKING:
    from onesearch_ray.serving.service import SearchService


@dataclass(frozen=True)
class SimRequest:
    query_id: int  # for the oracle only: a real system sees the text
    query: str
    user_id: str | None  # None: a new user (no id, no history)


class SearchSystem(Protocol):
    name: str
    description: str

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        """Item ids, best first, at most ``k`` per request."""
        ...


@runtime_checkable
class FeedbackRecorder(Protocol):
    """A system that logs what the simulated users did with its last batch of pages, as a live
    server's ``/feedback`` would (``onesearch simulate --feedback-log``)."""

    def record_feedback(self, row: int, clicked: Sequence[int], ordered: Sequence[int]) -> None:
        """Clicks and orders on the page of request ``row`` of the last ``search`` call."""
        ...


class RandomSystem:
    description = "random items from the catalogue"

    def __init__(self, world: World, seed: int = 0, name: str = "random") -> None:
        self.name, self._items, self._rng = name, world.item_ids, np.random.default_rng(seed)

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        size = min(k, len(self._items))
        return [self._rng.choice(self._items, size=size, replace=False).tolist() for _ in requests]


class OracleSystem:
    description = "known relevance, then the known user's brand, colour and category preferences"

    def __init__(self, world: World, name: str = "oracle") -> None:
        self.name, self.world = name, world
        self._user_row = {user: row for row, user in enumerate(world.user_ids)}
        self._popularity = world.track.items["popularity"].to_numpy()
        self._relevance: dict[int, np.ndarray] = {}

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        return [self._rank(request)[:k] for request in requests]

    def _rank(self, request: SimRequest) -> list[int]:
        items = self.world.item_ids
        if request.query_id not in self._relevance:
            self._relevance[request.query_id] = self.world.relevance(request.query_id, items)
        keys = [self._popularity, self._relevance[request.query_id]]
        if request.user_id is not None:
            brand, colour, category = self.world.likes(self._user_row[request.user_id], items)
            keys[1:1] = [category, colour, brand]  # lexsort: the last key sorts first
        return items[np.lexsort([-np.asarray(key, dtype=np.float64) for key in keys])].tolist()


class CascadeSystem:
    def __init__(
        self,
        world: World,
        item_vectors: np.ndarray,
        encoder: TextEncoder,
        rerank: RerankConfig | None = DEFAULT_RERANK,
        name: str = "cascade",
    ) -> None:
        self.name, self.world = name, world
        self.set_rerank(rerank)
        items = world.track.items
        self.bm25 = BM25Retriever(items["title"].to_pylist(), world.item_ids.tolist())
        self.dense = DenseRetriever(world.item_ids.tolist(), item_vectors, encoder=encoder)

    def set_rerank(self, rerank: RerankConfig | None) -> None:
        self.rerank = rerank
        self._weights = np.array([rerank.category, rerank.brand, rerank.colour]) if rerank else None
        self.description = "BM25 + dense (MiniLM) RRF" + (
            f" + personalised re-rank of the top {rerank.depth} (brand {rerank.brand}, colour "
            f"{rerank.colour}, category {rerank.category})"
            if rerank
            else ""
        )

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        fused = self.fuse(requests)
        return [self.personalise(ranked, r.user_id)[:k] for ranked, r in zip(fused, requests, strict=True)]

    def fuse(self, requests: Sequence[SimRequest]) -> list[list[int]]:
        """The RRF ranking of each request (before the re-rank)."""
        texts = [request.query for request in requests]
        return rrf_fuse(self.bm25.search(texts, RRF_DEPTH), self.dense.search(texts, RRF_DEPTH))

    def personalise(self, ranked: list[int], user_id: str | None) -> list[int]:
        """``ranked`` with its top ``rerank.depth`` re-ranked for the user (as is without a history)."""
        if self.rerank is None or user_id is None or not ranked:
            return ranked
        context = self.world.behaviour_index.context_for(user_id, long_len=self.rerank.history)
        if not context.long_items:
            return ranked
        head = ranked[: self.rerank.depth]
        history = self.world.item_facts[self.world.rows_of(context.long_items)]
        facts = self.world.item_facts[self.world.rows_of(head)]
        shares = np.stack(
            [
                (facts[:, None, facet] == history[None, :, facet]).mean(axis=1) * (facts[:, facet] >= 0)
                for facet in range(3)
            ],
            axis=1,
        )
        score = (RRF_K + 1) / (RRF_K + np.arange(1, len(head) + 1)) + shares @ self._weights
        order = np.argsort(-score, kind="stable")
        return [head[i] for i in order] + ranked[self.rerank.depth :]


class ImpressionPages:
    """A system whose pages are impressions of a feedback log: ``record_feedback`` sends the users'
    clicks and orders back against the page they were shown on (``_send_feedback``)."""

    _impressions: list[str | None]

    def record_feedback(self, row: int, clicked: Sequence[int], ordered: Sequence[int]) -> None:
        impression = self._impressions[row]
        if impression is None:  # the server keeps no feedback log
            return
        for item in clicked:
            self._send_feedback(impression, int(item), "click")
        for item in ordered:
            self._send_feedback(impression, int(item), "order")

    def _send_feedback(self, impression: str, item: int, action: str) -> None:
        raise NotImplementedError


class ServiceSystem(ImpressionPages):
    """A trained model through ``SearchService.search`` (as ``/search`` answers), beam ``beam``; with
    the service's feedback log, every page is an impression and the users' clicks and orders are
    recorded against it (``record_feedback``): the traffic becomes training data for ``--feedback``."""

    def __init__(self, name: str, service: SearchService, beam: int, engine: str) -> None:
        self.name, self.service, self.beam = name, service, beam
        self.description = f"{service.model_dir} ({engine} engine, beam {beam})"
        self._impressions: list[str | None] = []

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        from onesearch_ray.serving.schemas import SearchRequest
        from onesearch_ray.text import MAX_QUERY_CHARS

        answers = self.service.search(
            [
                SearchRequest(query=r.query[:MAX_QUERY_CHARS], user_id=r.user_id, k=k, beam=self.beam)
                for r in requests
            ]
        )
        pages = []
        for request, answer in zip(requests, answers, strict=True):
            if isinstance(answer, Exception):
                raise RuntimeError(f"{self.name}: search for {request.query!r} failed: {answer}") from answer
            pages.append([hit.item_id for hit in answer.items])
        self._impressions = [answer.impression_id for answer in answers]
        return pages

    def _send_feedback(self, impression: str, item: int, action: str) -> None:
        from onesearch_ray.serving.schemas import FeedbackRequest

        self.service.record_feedback(FeedbackRequest(impression_id=impression, item_id=item, action=action))


class HttpSystem(ImpressionPages):
    """A running search API (``onesearch serve``) over real HTTP: ``POST /search`` per search, and
    each page's clicks and orders sent back to ``POST /feedback`` as a user's browser would, so the
    server's own feedback log records the traffic. CPU ms are this client's only (the server's are
    not counted); wall ms include the server."""

    def __init__(
        self, name: str, url: str, beam: int, token: str | None = None, timeout: float = 120
    ) -> None:
        import httpx

        self.name, self.beam = name, beam
        self.description = f"the search API at {url} (beam {beam})"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=url, headers=headers, timeout=timeout)
        self._impressions: list[str | None] = []

    def search(self, requests: Sequence[SimRequest], k: int) -> list[list[int]]:
        from onesearch_ray.text import MAX_QUERY_CHARS

        answers = []
        for request in requests:
            body = {"query": request.query[:MAX_QUERY_CHARS], "k": k, "beam": self.beam}
            if request.user_id is not None:
                body["user_id"] = request.user_id
            answers.append(self._post("/search", body))
        self._impressions = [answer.get("impression_id") for answer in answers]
        return [[hit["item_id"] for hit in answer["items"]] for answer in answers]

    def _send_feedback(self, impression: str, item: int, action: str) -> None:
        self._post("/feedback", {"impression_id": impression, "item_id": item, "action": action})

    def _post(self, route: str, body: dict) -> dict:
        response = self._client.post(route, json=body)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name}: {route} answered {response.status_code}: {response.text[:300]}")
        return response.json()
