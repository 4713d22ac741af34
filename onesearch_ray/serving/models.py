"""The models a ``SearchService`` serves, behind one small interface.

- ``GeneratorModel``: the CPU-first generator (``RUN/generator``, ``onesearch generator``): prompt
  embeddings -> KHQE code beams -> the item step; the default wherever a run has one.
- ``SidModel``: a SID decoder of ``RUN/model/*`` (``onesearch train``) under trie-constrained beams.

Both answer a batch of searches (a request and its user's context) with catalogue hits, take
live-added items, and describe each search as the text an impression records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from onesearch_ray.behavior import UserContext
from onesearch_ray.decoding.beam import DecodingEngine, SearchLimitError, SidHit
from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.online import RunTextEncoder
from onesearch_ray.model import check_model_dir, load_tokenizer
from onesearch_ray.prompts import PromptBuilder, PromptConfig, SidVocabulary
from onesearch_ray.runs import GENERATOR_DIR, is_generator_dir
from onesearch_ray.serving.schemas import SearchHit, SearchRequest

EngineFactory = Callable[[Path, SidVocabulary, SidTrie], DecodingEngine]
MakeHit = Callable[[int, float], SearchHit]  # (item id, score) -> a hit with its title and SID


class BadRequestError(ValueError):
    """A well-formed request the engine cannot serve (HTTP 422)."""


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

    def search(self, searches: Sequence[Search]) -> list[list[SearchHit] | Exception]:
        """Hits (best first, at most ``k``) per search, or the error of a search it cannot serve."""
        ...

    def add_items(self, items: NewItems, trie: SidTrie) -> None:
        """Make live-added items searchable; ``trie`` is the catalogue's new trie version."""
        ...


def model_dirs(run: Path) -> list[Path]:
    """The servable models of a run: its generators (``RUN/generator``, ``RUN/generator-NAME``)
    first, then its SID decoders."""
    generators = sorted(p for p in run.glob(f"{GENERATOR_DIR}*") if p.is_dir() and is_generator_dir(p))
    root = run / "model"
    decoders = sorted(p for p in root.iterdir() if (p / "config.json").is_file()) if root.is_dir() else []
    return generators + decoders


class GeneratorModel:
    """The CPU-first generator; ``engine`` "vllm" (or "vllm-compiled") or "transformers" (the torch
    reference). The request's ``beam`` sets how many prefixes the last code level keeps."""

    def __init__(
        self, directory: Path, engine: str, encoder: RunTextEncoder, make_hit: MakeHit, added: list[NewItems]
    ) -> None:
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

    def search(self, searches: Sequence[Search]) -> list[list[SearchHit] | Exception]:
        from onesearch_ray.generator.prompts import build_prompts
        from onesearch_ray.generator.search import search as generate

        results: list[list[SearchHit] | Exception] = [[] for _ in searches]
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


class SidModel:
    """A SID decoder (``RUN/model/*``) behind a decoding engine, under the catalogue's trie."""

    def __init__(
        self,
        directory: Path,
        engine_factory: EngineFactory,
        sids: SemanticIdTokenizer,
        encoder: RunTextEncoder,
        make_hit: MakeHit,
        trie: SidTrie,
    ) -> None:
        check_model_dir(directory)  # names a missing or corrupt file before any engine loads it
        self.directory, self.sids, self.encoder, self.make_hit = directory, sids, encoder, make_hit
        self.vocabulary = SidVocabulary.from_tokenizers(load_tokenizer(directory), sids)
        self.builder = PromptBuilder(sids, PromptConfig())
        self.engine = engine_factory(directory, self.vocabulary, trie)

    def beam_of(self, request: SearchRequest) -> int:
        return request.effective_beam

    def describe(self, search: Search) -> str:
        query = search.request.query
        query_codes = tuple(int(c) for c in self.sids.encode(self.encoder.encode([query]))[0])
        return self.builder.search_prompt(query, query_codes, search.context)

    def search(self, searches: Sequence[Search]) -> list[list[SearchHit] | Exception]:
        results: list[list[SearchHit] | Exception] = [[] for _ in searches]
        beams = [self.beam_of(s.request) for s in searches]
        for beam in sorted(set(beams)):
            slots = [i for i, b in enumerate(beams) if b == beam]
            try:
                found = self.engine.search([searches[i].prompt for i in slots], beam)
            except SearchLimitError as err:  # prompt too long or beam too wide for this engine
                for slot in slots:
                    results[slot] = BadRequestError(str(err))
                continue
            for slot, hits in zip(slots, found, strict=True):
                results[slot] = self._items(hits, searches[slot].request.k)
        return results

    def _items(self, hits: list[SidHit], k: int) -> list[SearchHit]:
        results: list[SearchHit] = []
        for hit in hits:
            results.extend(self.make_hit(i, hit.score) for i in self.sids.items_for_sid(hit.codes))
            if len(results) >= k:
                break
        return results[:k]

    def add_items(self, items: NewItems, trie: SidTrie) -> None:
        self.engine.set_trie(trie)  # the SID tokenizer, shared with the service, already holds them

    def same_vocabulary(self, other: SidVocabulary) -> bool:
        a, b = self.vocabulary.position_token_ids, other.position_token_ids
        return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
