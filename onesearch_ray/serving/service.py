"""The search service behind the HTTP API: request -> the served model -> items.

Pure Python (no Ray): ``serve_apps/search_app.py`` wraps it in a Ray Serve deployment. It serves a
generator of the run (``generator.served``): the run's latest, ``RUN/generator`` or an alignment of it
(``RUN/generator-NAME``). The catalogue is live (``onesearch_ray.catalogue``): ``add_items`` encodes
new items with the frozen KHQE codebooks, puts each on the trained SID that describes it best
(``SemanticIdTokenizer.nearest_existing_sids``), writes them to the run's add log when the service
keeps one (``add_log``: fsynced before the answer, replayed at the next start) and publishes a new
catalogue snapshot holding them; the model scores them by their own vectors and title terms at once.
Every search reads one snapshot, so none sees a half-added batch, and an add costs in proportion to
the items it adds. The model is live too: ``swap_model`` lets the searches running finish, holds new
ones back while it loads another model of the run, then lets them run on it: none fails; the added
items stay.

With a feedback log every search is recorded as an impression (what was shown, for which search and
model) and ``record_feedback`` stores clicks and orders against it: the data
``onesearch generator --feedback LOG`` learns from.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onesearch_ray.behavior import BehaviorIndex, UserContext
from onesearch_ray.catalogue import AddLog, NewItems, Snapshot
from onesearch_ray.catalogue.shards import ShardClient, ShardScorer
from onesearch_ray.data import Track, load_track
from onesearch_ray.generator.served import (
    Ask,
    RunItems,
    ServedGenerator,
    held_out_items,
    model_dirs,
    track_items,
)
from onesearch_ray.retrieval.baselines import BM25Retriever
from onesearch_ray.rewards.feedback_log import (
    FeedbackLog,
    ItemNotShownError,
    ShownItem,
    UnknownImpressionError,
)
from onesearch_ray.runs import HOLDOUT_FILE, model_name, served_model_dir
from onesearch_ray.serving.schemas import (
    MAX_ADD_ITEMS,
    AddItemsRequest,
    AddItemsResponse,
    FeedbackRequest,
    FeedbackResponse,
    Item,
    ModelInfo,
    NewItem,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UserSummary,
)

log = logging.getLogger(__name__)
BM25_MODEL = "bm25"  # the model name impressions of /search/bm25 carry
ADD_LOG = "catalogue/added.log"  # under the run: the live adds `onesearch serve` keeps (catalogue.log)
__all__ = ["ConflictError", "NotFoundError", "SearchService"]


class NotFoundError(LookupError):
    """The request names something the service does not have (HTTP 404)."""

    def __str__(self) -> str:  # KeyError-style quoting of the message would be noise
        return str(self.args[0]) if self.args else ""


class UnknownUserError(NotFoundError):
    """A user id the service has no behaviour for (and the request brought no history)."""


class UnknownItemError(NotFoundError):
    """An item id that is not in the catalogue."""


class UnknownModelError(NotFoundError):
    """A model name that is not a model of this run."""


class ConflictError(ValueError):
    """The request would create something that already exists (HTTP 409)."""


@dataclass
class ResolvedRequest:
    """One request with what the service knows of its user."""

    request: SearchRequest
    context: UserContext | None

    @property
    def ask(self) -> Ask:
        """The request as the generator reads it."""
        history = list(self.context.short_items) if self.context is not None else []
        return Ask(self.request.query, history, self.request.k, self.request.beam)


class SearchService:
    def __init__(
        self,
        run: str | Path,
        engine: str,
        data: str | Path | None = None,
        model_dir: str | Path | None = None,
        feedback_log: FeedbackLog | None = None,
        add_log: str | Path | None = None,
        shards: Sequence[ShardClient] = (),
    ) -> None:
        """``engine``: one of ``generator.served.ENGINES`` ("vllm", "vllm-compiled", "transformers").
        ``add_log``: the write-ahead file of live adds (``ADD_LOG`` under the run is what ``onesearch
        serve`` keeps); its items join at start. Without it, adds live in memory only (evaluation).
        ``shards``: the catalogue's shards (``catalogue.shards``), which then hold the trained rows
        and score them; this service plans and shows hits (none: it holds everything itself)."""
        self.run = Path(run)
        self.engine = engine
        self.run_items = RunItems.load(self.run)
        self.run_items.encoder  # noqa: B018  loaded now: the first search must not wait seconds for it
        self.sids = self.run_items.sids
        self._model_dir = Path(model_dir) if model_dir else served_model_dir(self.run)
        self.model = self._load(self._model_dir)
        self._shards = ShardScorer(shards) if shards else None
        self.catalogue = self.model.catalogue(self.model_name, self._shards)
        self.add_log = None
        if add_log is not None:
            self.add_log = AddLog(add_log, self.sids.codebooks_digest)
            self._replay(self.add_log.read())
        self.data = data or _encoded_data(self.run)
        self.behavior = _behavior(self.data)
        self.feedback_log = feedback_log
        self._bm25: tuple[int, BM25Retriever] | None = None  # the catalogue version it was built on
        self._update_lock = threading.Lock()  # catalogue updates and model swaps, one at a time
        self._swap_gate = _SwapGate()

    def _load(self, directory: Path) -> ServedGenerator:
        return ServedGenerator(directory, self.engine, self.run_items)

    def _replay(self, batches: list[NewItems]) -> None:
        """Items of the add log join as one batch (one segment: cost in proportion to them)."""
        if not batches:
            return
        items = NewItems.joined(batches)
        self.catalogue.add(items, records=len(batches))  # shards replay the same log themselves
        log.info("%d items of %s joined the catalogue", len(items.item_ids), self.add_log.path)

    @property
    def model_dir(self) -> Path:
        """The serving model's directory (during a swap: the one being replaced, until the next loads)."""
        return self._model_dir

    def hits(self, ranking: Sequence[tuple[int, float]], items: Snapshot | None = None) -> list[SearchHit]:
        """Result rows: each item's title and SID beside its score (from ``items``: default the
        catalogue's current snapshot)."""
        shown = self._titles_and_sids([item for item, _ in ranking], items)
        return [
            SearchHit(item_id=int(item), title=title, sid=sid, score=float(score))
            for (item, score), (title, sid) in zip(ranking, shown, strict=True)
        ]

    def items_of(self, item_ids: Sequence[int], items: Snapshot | None = None) -> list[Item]:
        """The items' titles and SIDs, no score (from ``items``: default the current snapshot)."""
        shown = self._titles_and_sids(item_ids, items)
        return [
            Item(item_id=int(item), title=title, sid=sid)
            for item, (title, sid) in zip(item_ids, shown, strict=True)
        ]

    def _titles_and_sids(self, item_ids: Sequence[int], items: Snapshot | None) -> list[tuple[str, str]]:
        """Each item's title and SID string in ``items`` (empty strings for one it does not hold)."""
        shown = []
        for where in (items or self.catalogue.snapshot).locate(list(item_ids)):
            if where is None:
                shown.append(("", ""))
            else:
                segment, row = where
                shown.append((segment.titles[row].as_py(), self.sids.sid_string(segment.codes[row])))
        return shown

    # ---- search ---------------------------------------------------------------------------
    def search(self, requests: list[SearchRequest]) -> list[SearchResponse | Exception]:
        """A batch of requests, decoded together. A request that cannot be served (unknown user, bad
        history) gets its error in its slot; the others are answered."""
        with self._swap_gate.searching():  # a model swap waits for this batch and holds the next back
            return self._search(requests)

    def _search(self, requests: list[SearchRequest]) -> list[SearchResponse | Exception]:
        started = time.perf_counter()
        model, items = self.model, self.catalogue.snapshot  # one snapshot for the whole batch
        results: list[SearchResponse | Exception] = []
        searches: list[ResolvedRequest] = []
        slots: list[int] = []
        for request in requests:
            try:
                search = self.resolve(request, items)
            except NotFoundError as err:
                results.append(err)
                continue
            slots.append(len(results))
            searches.append(search)
            results.append(search)  # replaced by its answer below
        rankings = model.rank([search.ask for search in searches], items) if searches else []
        found = [self.hits(ranking, items) for ranking in rankings]
        elapsed = 1000 * (time.perf_counter() - started)
        for slot, search, hits in zip(slots, searches, found, strict=True):
            results[slot] = SearchResponse(
                items=hits,
                timing_ms=elapsed,
                trie_version=items.version,
                beam=model.beam_of(search.request.beam),
                impression_id=self._record(search, hits, self.model_name),
            )
        return results

    def resolve(self, request: SearchRequest, items: Snapshot | None = None) -> ResolvedRequest:
        """The request with its user's context (unknown user: 404)."""
        return ResolvedRequest(request, self._context(request, items or self.catalogue.snapshot))

    def _context(self, request: SearchRequest, items: Snapshot) -> UserContext | None:
        if request.history is not None:
            unknown = [
                i
                for i, where in zip(request.history, items.locate(request.history), strict=True)
                if not where
            ]
            if unknown:
                raise UnknownItemError(f"history: unknown item id(s) {unknown[:5]}")
            return UserContext.from_history(request.user_id, request.history)
        if request.user_id is None:
            return None
        if self.behavior is None or request.user_id not in self.behavior:
            raise UnknownUserError(f"unknown user_id {request.user_id!r} (send `history` for a new user)")
        return self.behavior.context_for(request.user_id)

    def bm25(self, request: SearchRequest) -> SearchResponse:
        """The BM25 baseline on titles, for side-by-side comparison; users are checked as in ``search``."""
        started = time.perf_counter()
        snapshot = self.catalogue.snapshot
        search = self.resolve(request, snapshot)  # validates user and history; the impression keeps it
        version, retriever = self._bm25 or (None, None)
        if version != snapshot.version:  # built again on the first BM25 search after a catalogue change
            titles = [title for s in snapshot.segments for title in s.titles.to_pylist()]
            ids = np.concatenate([s.item_ids for s in snapshot.segments]).tolist()
            retriever = BM25Retriever(titles, ids)
            self._bm25 = (snapshot.version, retriever)
        items = self.hits(retriever.search_scored([request.query], request.k)[0], snapshot)
        return SearchResponse(
            items=items,
            timing_ms=1000 * (time.perf_counter() - started),
            trie_version=snapshot.version,
            beam=0,
            impression_id=self._record(search, items, BM25_MODEL),
        )

    # ---- feedback --------------------------------------------------------------------------
    def _record(self, search: ResolvedRequest, items: list[SearchHit], model: str) -> str | None:
        if self.feedback_log is None:
            return None
        shown = [ShownItem(hit.item_id, hit.sid) for hit in items]
        query, user = search.request.query, search.request.user_id
        return self.feedback_log.record_impression(query, search.ask.history, user, shown, model)

    def record_feedback(self, request: FeedbackRequest) -> FeedbackResponse:
        """A click or order on an item an impression showed (unknown impression or item: NotFoundError)."""
        if self.feedback_log is None:
            raise NotFoundError("this server keeps no feedback log, so it has no impressions")
        try:
            event_id = self.feedback_log.record_event(request.impression_id, request.item_id, request.action)
        except (UnknownImpressionError, ItemNotShownError) as err:
            raise NotFoundError(str(err)) from None
        return FeedbackResponse(
            event_id=event_id,
            impression_id=request.impression_id,
            item_id=request.item_id,
            action=request.action,
        )

    # ---- live model --------------------------------------------------------------------------
    @property
    def model_name(self) -> str:
        return model_name(self.run, self.model_dir)

    def available_models(self) -> list[str]:
        return [model_name(self.run, path) for path in model_dirs(self.run)]

    def swap_model(self, name: str) -> ModelInfo:
        """Serve model ``name`` (from ``available_models``, or its last part). Searches running finish
        on the old model; new ones wait while the next loads (seconds), then run on it: none fails."""
        models = self.available_models()
        by_name = {**{Path(model).name: model for model in models}, **{model: model for model in models}}
        if name not in by_name:
            raise UnknownModelError(
                f"unknown model {name!r} (this run has: {', '.join(sorted(set(by_name.values())))})"
            )
        directory = self.run / by_name[name]
        # the catalogue may not change while the next model loads with it; no search may run meanwhile
        with self._update_lock, self._swap_gate.swapping():
            self.model = None  # two vLLM engines in one process must not overlap: drop the old first
            gc.collect()
            try:
                self.model = self._load(directory)
            except Exception:
                self.model = self._load(self._model_dir)  # the old again
                raise
            self._model_dir = directory
            self._rebase()
        log.info("now serving %s", directory)
        return ModelInfo(model=self.model_name, available=self.available_models())

    def _rebase(self) -> None:
        """The catalogue's trained items as the newly loaded model has them; added items stay."""
        fresh = self.model.catalogue(self.model_name, self._shards)
        learned = fresh.snapshot
        self.catalogue.rebase(
            learned.segments[0], fresh.learned_weights, fresh.lexical_scale, self.model_name
        )

    # ---- live catalogue --------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return self.catalogue.snapshot.n_items

    @property
    def catalogue_version(self) -> int:
        return self.catalogue.snapshot.version

    def add_items(self, request: AddItemsRequest) -> AddItemsResponse:
        """Encode new items with the frozen codebooks and make them searchable at once, on trained SIDs;
        with an add log, they are on disk before this returns."""
        ids = [item.item_id for item in request.items]
        repeated = sorted(i for i, n in collections.Counter(ids).items() if n > 1)
        if repeated:
            raise ConflictError(f"items: item_id(s) {repeated[:5]} appear more than once in the request")
        with self._update_lock:
            snapshot = self.catalogue.snapshot
            taken = [i for i, where in zip(ids, snapshot.locate(ids), strict=True) if where]
            if taken:
                raise ConflictError(f"items: item_id(s) {taken[:5]} already in the catalogue")
            items = self.model.new_items(
                ids, [item.title for item in request.items], [item.brand for item in request.items]
            )
            if self.add_log is not None:
                self.add_log.append(items)  # durable before it is visible or acknowledged
            if self._shards is not None:  # the shards first: the planner's snapshot names this add
                self._shards.add(items, snapshot.records + 1)
            snapshot = self.catalogue.add(items)
        added = self.items_of(ids, snapshot)
        return AddItemsResponse(added=added, trie_version=snapshot.version, n_items=snapshot.n_items)

    def add_track_items(self, track: Track, item_ids: Sequence[int]) -> None:
        """Add rows of ``track.items`` (by item id) exactly as ``POST /items`` would, a request at a time."""
        ids, titles, brands = track_items(track, item_ids)
        new = [NewItem(item_id=i, title=t, brand=b) for i, t, b in zip(ids, titles, brands, strict=True)]
        for start in range(0, len(new), MAX_ADD_ITEMS):
            self.add_items(AddItemsRequest(items=new[start : start + MAX_ADD_ITEMS]))

    def add_held_out(self, track: Track | None = None) -> list[int]:
        """The run's cold-start hold-out (``RUN/holdout.json``: left out of KHQE fitting and training)
        joins the catalogue as new items do (those already there from the add log are kept); returns
        their ids (none when the run holds none out). ``track``: the one the run encoded (default:
        read from ``data`` or the run's manifest)."""
        if not (self.run / HOLDOUT_FILE).is_file():
            return []
        if track is None:
            if self.data is None or not Path(self.data).exists():
                raise FileNotFoundError(f"{self.run} holds items out but its track is not found: pass data")
            track = load_track(self.data)
        held_out = held_out_items(self.run, track)
        snapshot = self.catalogue.snapshot
        joining = [i for i, where in zip(held_out, snapshot.locate(held_out), strict=True) if where is None]
        self.add_track_items(track, joining)
        log.info("%d held-out items joined the catalogue live", len(joining))
        return held_out

    def item(self, item_id: int) -> Item:
        snapshot = self.catalogue.snapshot
        if not snapshot.has(item_id):
            raise UnknownItemError(f"unknown item_id {item_id}")
        return self.items_of([item_id], snapshot)[0]

    # ---- users -----------------------------------------------------------------------------
    def users(self, limit: int = 50, offset: int = 0) -> list[str]:
        return [] if self.behavior is None else self.behavior.user_ids()[offset : offset + limit]

    def user_summary(self, user_id: str) -> UserSummary:
        if self.behavior is None or user_id not in self.behavior:
            raise UnknownUserError(f"unknown user_id {user_id!r}")
        context = self.behavior.context_for(user_id)
        recent = self.items_of(context.short_items[::-1])
        return UserSummary(user_id=user_id, recent_queries=context.recent_queries[::-1], recent_items=recent)


class _SwapGate:
    """Searches share the engine; a swap waits until those running finish and holds new ones back
    until the next engine is loaded (vLLM keeps per-process state two engines would fight over)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._searching = 0
        self._swapping = False

    @contextlib.contextmanager
    def searching(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._swapping)
            self._searching += 1
        try:
            yield
        finally:
            with self._condition:
                self._searching -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def swapping(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._swapping)
            self._swapping = True
            self._condition.wait_for(lambda: self._searching == 0)
        try:
            yield
        finally:
            with self._condition:
                self._swapping = False
                self._condition.notify_all()


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
