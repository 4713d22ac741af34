"""The search service behind the HTTP API: request -> prompt -> constrained beam search -> items.

Pure Python (no Ray): ``serve_apps/search_app.py`` wraps it in a Ray Serve deployment. The
catalogue is live: ``add_items`` encodes new items with the frozen KHQE codebooks, puts each on the
trained SID that describes it best (``SemanticIdTokenizer.add_items``: a SID the model generates)
and swaps in a new trie version; searches already running keep the version they started with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from onesearch_ray.behavior import BehaviorIndex, UserContext
from onesearch_ray.data import load_track
from onesearch_ray.decoding.beam import DecodingEngine, SearchLimitError, SidHit
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.eval.baselines import BM25Retriever
from onesearch_ray.khqe import SemanticIdTokenizer, item_text
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.prompts import PromptBuilder, PromptConfig, SidVocabulary
from onesearch_ray.runs import latest_model_dir
from onesearch_ray.serving.schemas import (
    AddItemsRequest,
    AddItemsResponse,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UserSummary,
)

log = logging.getLogger(__name__)
EngineFactory = Callable[[Path, SidVocabulary, SidTrie], DecodingEngine]


class UnknownUserError(KeyError):
    """A user id the service has no behaviour for (and the request brought no history)."""


class BadRequestError(ValueError):
    """A well-formed request the catalogue cannot serve (e.g. unknown item ids)."""


@dataclass
class Catalogue:
    titles: dict[int, str]

    def hit(self, item_id: int, score: float, sid: str) -> SearchHit:
        return SearchHit(item_id=item_id, title=self.titles.get(item_id, ""), score=score, sid=sid)


class SearchService:
    def __init__(
        self,
        run: str | Path,
        engine_factory: EngineFactory,
        data: str | Path | None = None,
        model_dir: str | Path | None = None,
    ) -> None:
        self.run = Path(run)
        self.sids = SemanticIdTokenizer.load(self.run / "sid_tokenizer")
        self.model_dir = Path(model_dir) if model_dir else latest_model_dir(self.run)
        from onesearch_ray.model import check_model_dir, load_tokenizer

        check_model_dir(self.model_dir)  # names a missing or corrupt file before any engine loads it
        self.vocabulary = SidVocabulary.from_tokenizers(load_tokenizer(self.model_dir), self.sids)
        self.trie = SidTrie.of_catalogue(self.sids)
        self.engine = engine_factory(self.model_dir, self.vocabulary, self.trie)
        self.builder = PromptBuilder(self.sids, PromptConfig())
        self.text_encoder = RunTextEncoder.from_run(self.run)
        items = pq.read_table(self.run / "items.parquet", columns=["item_id", "title"])
        self.catalogue = Catalogue(
            dict(zip(items.column("item_id").to_pylist(), items.column("title").to_pylist(), strict=True))
        )
        self.behavior = _behavior(data or _encoded_data(self.run))
        self._bm25: BM25Retriever | None = None
        self._update_lock = threading.Lock()

    # ---- search ---------------------------------------------------------------------------
    def search(self, requests: list[SearchRequest]) -> list[SearchResponse | Exception]:
        """A batch of requests; those sharing a beam width decode together. A request that cannot be
        served (unknown user, bad history) gets its error in its slot; the others are answered."""
        started = time.perf_counter()
        prompts: list[str | Exception] = []
        for request in requests:
            try:
                prompts.append(self.prompt_for(request))
            except (UnknownUserError, BadRequestError) as err:
                prompts.append(err)
        results: list[SearchResponse | Exception] = [p for p in prompts]
        version = self.trie.version
        for beam in sorted({r.beam for r, p in zip(requests, prompts, strict=True) if isinstance(p, str)}):
            rows = [i for i, r in enumerate(requests) if r.beam == beam and isinstance(prompts[i], str)]
            try:
                found = self.engine.search([prompts[i] for i in rows], beam)
            except SearchLimitError as err:  # prompt too long or beam too wide for this engine
                for row in rows:
                    results[row] = BadRequestError(str(err))
                continue
            elapsed = 1000 * (time.perf_counter() - started)
            for row, hits in zip(rows, found, strict=True):
                items = self._items(hits, requests[row].k)
                results[row] = SearchResponse(items=items, timing_ms=elapsed, trie_version=version)
        return results

    def prompt_for(self, request: SearchRequest) -> str:
        context = self._context(request)
        query_codes = tuple(int(c) for c in self.sids.encode(self.text_encoder.encode([request.query]))[0])
        return self.builder.search_prompt(request.query, query_codes, context)

    def _context(self, request: SearchRequest) -> UserContext | None:
        if request.history is not None:
            unknown = [i for i in request.history if not self.sids.has_item(i)]
            if unknown:
                raise BadRequestError(f"history: unknown item id(s) {unknown[:5]}")
            return UserContext.from_history(request.user_id, request.history)
        if request.user_id is None:
            return None
        if self.behavior is None or request.user_id not in self.behavior:
            raise UnknownUserError(f"unknown user_id {request.user_id!r} (send `history` for a new user)")
        return self.behavior.context_for(request.user_id)

    def _items(self, hits: list[SidHit], k: int) -> list[SearchHit]:
        results: list[SearchHit] = []
        for hit in hits:
            sid = self.sids.sid_string(hit.codes)
            results.extend(self.catalogue.hit(i, hit.score, sid) for i in self.sids.items_for_sid(hit.codes))
            if len(results) >= k:
                break
        return results[:k]

    def bm25(self, query: str, k: int) -> list[SearchHit]:
        """The BM25 baseline on titles, for side-by-side comparison in the demo."""
        if self._bm25 is None:
            ids = list(self.catalogue.titles)
            self._bm25 = BM25Retriever([self.catalogue.titles[i] for i in ids], ids)
        ranked = self._bm25.search([query], k)[0]
        return [self.catalogue.hit(i, 0.0, self._sid_of(i)) for i in ranked]

    # ---- live catalogue --------------------------------------------------------------------
    def add_items(self, request: AddItemsRequest) -> AddItemsResponse:
        """Encode new items with the frozen codebooks and make them searchable at once, on trained SIDs."""
        ids = [item.item_id for item in request.items]
        if len(set(ids)) != len(ids):
            raise BadRequestError("items: duplicate item_id in the request")
        with self._update_lock:
            taken = [i for i in ids if self.sids.has_item(i)]
            if taken:
                raise BadRequestError(f"items: item_id(s) {taken[:5]} already in the catalogue")
            texts = [item_text(item.title, item.brand) for item in request.items]
            codes = self.sids.add_items(ids, self.text_encoder.encode(texts, "passage"))
            for item in request.items:
                self.catalogue.titles[item.item_id] = item.title
            self.trie = self.trie.with_added(codes)
            self.engine.set_trie(self.trie)
            self._bm25 = None
        added = [self.catalogue.hit(i, 0.0, self.sids.sid_string(c)) for i, c in zip(ids, codes, strict=True)]
        return AddItemsResponse(added=added, trie_version=self.trie.version, n_items=self.sids.n_items)

    # ---- users -----------------------------------------------------------------------------
    def users(self, limit: int = 50) -> list[str]:
        return [] if self.behavior is None else self.behavior.user_ids()[:limit]

    def user_summary(self, user_id: str) -> UserSummary:
        if self.behavior is None or user_id not in self.behavior:
            raise UnknownUserError(f"unknown user_id {user_id!r}")
        context = self.behavior.context_for(user_id)
        recent = [self.catalogue.hit(i, 0.0, self._sid_of(i)) for i in context.short_items[::-1]]
        return UserSummary(user_id=user_id, recent_queries=context.recent_queries[::-1], recent_items=recent)

    def _sid_of(self, item_id: int) -> str:
        return self.sids.sid_string(self.sids.item_codes([item_id])[0]) if self.sids.has_item(item_id) else ""


def _encoded_data(run: Path) -> str | None:
    manifest = run / "manifest.json"
    if not manifest.exists():
        return None
    return json.loads(manifest.read_text()).get("stages", {}).get("encode", {}).get("inputs", {}).get("data")


def _behavior(data: str | Path | None) -> BehaviorIndex | None:
    if data is None or not Path(data).exists():
        return None
    track = load_track(data)
    if track.interactions is None and track.sequences is None:
        return None
    return BehaviorIndex.from_track(track)
