"""Shards: the catalogue's item rows split over N holders; one planner; the top items merged.

A planner (the search service) holds the catalogue's group index, lexical postings, titles and SIDs
(everything but the trained items' dense rows, the bulk of the memory) and plans every search once,
as with one shard. Each :class:`CatalogueShard` holds the items ``live.shard_of`` gives it, with
their dense rows, and answers the item step for the planner's plans over its own items only; the
:class:`ShardScorer` sends a batch to every shard at once and merges their top ``k`` lists. Scores
do not depend on the split, so N shards rank as one does.

Adds: the planner writes an add to the add log, sends it to every shard (each keeps its own items but
follows every title, so vocabulary and term weights stay the same everywhere), then publishes its own
snapshot. A shard keeps its last snapshots by ``records`` (adds applied) and scores the one the
planner's snapshot names, so a search never sees an add half-applied across shards. A shard that
missed adds (it was down, or restarted) catches up from the add log before it answers.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Protocol

import numpy as np

from onesearch_ray.catalogue.live import LiveCatalogue, NewItems, Snapshot, top_indices
from onesearch_ray.catalogue.log import AddLog

log = logging.getLogger(__name__)
KEPT_SNAPSHOTS = 8  # a shard's recent snapshots, for searches planned on an older planner snapshot
Found = list[tuple[np.ndarray, np.ndarray]]  # per search: (item ids, scores), best first


class ShardClient(Protocol):
    """How a planner reaches one shard (in process, or a Ray Serve deployment handle)."""

    def top_items(
        self,
        plans: Sequence,
        queries: np.ndarray,
        terms: Sequence[np.ndarray],
        k: int,
        records: int,
        model: str,
    ) -> Future:
        """A future of :meth:`CatalogueShard.top_items`."""
        ...

    def add(self, items: NewItems, records: int) -> Future:
        """A future of :meth:`CatalogueShard.add`."""
        ...


class ShardScorer:
    """The item step of a planner's snapshot over shards: every shard at once, top ``k`` merged."""

    def __init__(self, shards: Sequence[ShardClient]) -> None:
        if not shards:
            raise ValueError("a sharded catalogue needs at least one shard")
        self.shards = list(shards)

    def __call__(
        self, snapshot: Snapshot, plans: Sequence, queries: np.ndarray, terms: Sequence[np.ndarray], k: int
    ) -> Found:
        pending = [
            shard.top_items(plans, queries, terms, k, snapshot.records, snapshot.model)
            for shard in self.shards
        ]
        per_shard = [future.result() for future in pending]
        out = []
        for found in zip(*per_shard, strict=True):
            ids = np.concatenate([f[0] for f in found])
            scores = np.concatenate([f[1] for f in found])
            best = top_indices(scores, k, ids)
            out.append((ids[best], scores[best]))
        return out

    def add(self, items: NewItems, records: int) -> None:
        """Send an add to every shard (``records``: the planner's count with it) and wait for them. A
        shard that fails it is logged, not fatal: the add is in the add log already, and the shard
        catches up from it when a search names an add it lacks."""
        pending = [shard.add(items, records) for shard in self.shards]
        for index, future in enumerate(pending):
            try:
                future.result()
            except Exception as err:  # noqa: BLE001 - any failure of a remote shard is survivable here
                log.warning(
                    "shard %d did not take add %d (%s): it catches up from the add log", index, records, err
                )


class CatalogueShard:
    """One shard's live catalogue (built with ``shard=(i, n)``), its recent snapshots by ``records``,
    and how it catches up: ``read_log`` (the planner's add log, read only: :func:`log_reader`) and
    ``load`` (model name -> a fresh shard catalogue of that model's rows, after a model swap)."""

    def __init__(
        self,
        catalogue: LiveCatalogue,
        load: Callable[[str], LiveCatalogue],
        read_log: Callable[[], list[NewItems]] | None = None,
    ) -> None:
        if catalogue.shard is None:
            raise ValueError("a CatalogueShard needs a catalogue built with shard=(index, count)")
        self.catalogue, self._load, self._read_log = catalogue, load, read_log
        self._lock = threading.Lock()
        self._kept: collections.OrderedDict[int, Snapshot] = collections.OrderedDict()
        self._catch_up(0)

    @property
    def records(self) -> int:
        return self.catalogue.snapshot.records

    def add(self, items: NewItems, records: int) -> int:
        """Apply the planner's add that brings it to ``records`` adds (one it already has is skipped;
        a gap is filled from the add log first). Returns the records applied here."""
        with self._lock:
            if records > self.records + 1:
                self._catch_up(records - 1)
            if records == self.records + 1:
                self._keep(self.catalogue.add(items))
            return self.records

    def top_items(
        self,
        plans: Sequence,
        queries: np.ndarray,
        terms: Sequence[np.ndarray],
        k: int,
        records: int,
        model: str,
    ) -> Found:
        """This shard's top ``k`` under the planner's plans, on its snapshot of ``records`` adds and
        ``model``'s rows (the latest, if a restart dropped that one)."""
        with self._lock:
            if model != self.catalogue.snapshot.model:
                self._rebase(model)
            if records > self.records:
                self._catch_up(records)
            snapshot = self._kept.get(records, self.catalogue.snapshot)
        return snapshot.top_items(plans, queries, terms, k)

    def _catch_up(self, records: int) -> None:
        """Apply the add log's records this shard lacks (at start: all of them)."""
        batches = self._read_log() if self._read_log is not None else []
        missing = batches[self.records :]
        if records > self.records + len(missing):
            raise RuntimeError(
                f"shard {self.catalogue.shard}: the planner has {records} adds, the add log "
                f"{len(batches)}: this shard cannot catch up"
            )
        if missing:
            self._keep(self.catalogue.add(NewItems.joined(missing), records=len(missing)))
        elif not self._kept:
            self._keep(self.catalogue.snapshot)

    def _rebase(self, model: str) -> None:
        fresh = self._load(model)
        self.catalogue.rebase(fresh.snapshot.segments[0], fresh.learned_weights, fresh.lexical_scale, model)
        self._kept.clear()
        self._keep(self.catalogue.snapshot)

    def _keep(self, snapshot: Snapshot) -> None:
        self._kept[snapshot.records] = snapshot
        while len(self._kept) > KEPT_SNAPSHOTS:
            self._kept.popitem(last=False)


def log_reader(path: Path, codebooks_digest: str) -> Callable[[], list[NewItems]]:
    """Reads the planner's add log without writing it (no header made, no torn tail cut)."""

    def read() -> list[NewItems]:
        if not path.is_file() or path.stat().st_size == 0:
            return []
        return AddLog(path, codebooks_digest).read(repair=False)

    return read


class LocalShard:
    """A :class:`CatalogueShard` in this process as a :class:`ShardClient` (tests, benchmarks)."""

    def __init__(self, shard: CatalogueShard) -> None:
        self.shard = shard

    def top_items(self, plans, queries, terms, k, records, model) -> Future:
        return _done(self.shard.top_items(plans, queries, terms, k, records, model))

    def add(self, items: NewItems, records: int) -> Future:
        return _done(self.shard.add(items, records))


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future
