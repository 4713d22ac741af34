"""In-batch beam search (``decoding.inflight``) on a simulated engine, against a plain beam search.

The simulated engine does what vLLM does around a logits processor: a persistent batch whose rows
come and go (freed rows reused, rows moved and swapped), one token per live request per step
(greedy on the processed logits), requests ending on the stop token or at ``max_tokens``, and the
driver adding the searches' new requests between steps. Its "model" gives every token path a fixed
pseudo-random logit vector, so the reference can score the same paths directly.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from onesearch_ray.decoding.beam import select_beams
from onesearch_ray.decoding.inflight import BeamRow, BeamRows, SearchState
from onesearch_ray.decoding.trie import SidTrie

SIZES = (6, 5, 4, 3)
VOCAB = 40
STOP = 1
POSITION_IDS = [np.arange(2 + sum(SIZES[:d]), 2 + sum(SIZES[: d + 1])) for d in range(len(SIZES))]


def model_logits(path: tuple[int, ...], salt: int = 0) -> torch.Tensor:
    seed = zlib.crc32(repr((salt, path)).encode())
    return torch.as_tensor(np.random.default_rng(seed).normal(0, 2, VOCAB), dtype=torch.float32)


def reference_search(trie: SidTrie, beam: int, salt: int) -> list[tuple[tuple[int, ...], float]]:
    codes, scores = np.zeros((1, 0), np.int64), np.zeros(1)
    for depth in range(trie.depth):
        paths = [tuple(int(POSITION_IDS[d][c]) for d, c in enumerate(row)) for row in codes]
        logits = torch.stack([model_logits(p, salt) for p in paths])
        logprobs = torch.log_softmax(logits, -1)[:, POSITION_IDS[depth]].numpy()
        _, codes, scores = select_beams(scores, codes, logprobs, trie.allowed_mask(codes), beam)
        if len(codes) == 0:
            break
    return [(tuple(int(c) for c in row), float(s)) for row, s in zip(codes, scores, strict=True)]


class SimulatedEngine:
    """A persistent batch driven like vLLM's: removed, added (reusing free rows), then moved rows."""

    def __init__(self, searches: dict[int, SearchState], rng: np.random.Generator) -> None:
        self.searches, self.rng = searches, rng
        self.processor = BeamRows(searches)
        self.batch: dict[int, dict] = {}  # row index -> request
        self.salt_of: dict[int, int] = {}
        self.steps = 0

    def add(self, prompt_tail: tuple[int, ...], beam_row: BeamRow | None, max_tokens: int, salt: int) -> dict:
        free = next(i for i in range(len(self.batch) + 1) if i not in self.batch)
        request = {"tail": prompt_tail, "out": [] if beam_row is None else beam_row.output_ids,
                   "row": beam_row, "max": max_tokens, "salt": salt, "new": True}  # fmt: skip
        self.batch[free] = request
        return request

    def submit(self, search: SearchState, salt: int) -> None:
        base = len(search.prompt_ids)
        for prompt in search.pending:
            out: list[int] = []
            row = BeamRow(search.search_id, tuple(prompt[base:]), out, STOP)
            self.add(tuple(prompt[base:]), row, len(SIZES) - (len(prompt) - base), salt)
        search.pending = []

    def step(self, finished: list[int]) -> None:
        added = [(i, r["row"]) for i, r in self.batch.items() if r.pop("new", False)]
        moved = []
        if len(self.batch) > 2:  # rows move as in vLLM's batch condensing and reordering
            a, b = (int(i) for i in self.rng.choice(sorted(self.batch), 2, replace=False))
            self.batch[a], self.batch[b] = self.batch[b], self.batch[a]
            moved.append((a, b, True))
            empty = next(i for i in range(len(self.batch) + 1) if i not in self.batch)
            self.batch[empty] = self.batch.pop(a)  # one-way, into a free row
            moved.append((a, empty, False))
        self.processor.update(finished, added, moved)
        width = max(self.batch) + 1
        logits = torch.zeros((width, VOCAB))
        for index, r in self.batch.items():
            logits[index] = model_logits((*r["tail"], *r["out"]), r["salt"])
        raw = logits.clone()
        processed = self.processor.apply(logits)
        finished.clear()
        for index, r in list(self.batch.items()):
            if r["row"] is None:
                assert torch.equal(processed[index], raw[index])  # other requests are untouched
            token = int(processed[index].argmax())
            r["out"].append(token)
            if token == STOP or len(r["out"]) >= r["max"]:
                finished.append(index)
                del self.batch[index]
        self.steps += 1


def make_trie(rng: np.random.Generator, n: int) -> SidTrie:
    sids = {tuple(int(rng.integers(0, k)) for k in SIZES) for _ in range(n)}
    return SidTrie(sorted(sids), SIZES)


@pytest.mark.parametrize("seed", range(4))
def test_in_batch_search_equals_plain_beam_search(seed):
    rng = np.random.default_rng(seed)
    registry: dict[int, SearchState] = {}
    engine = SimulatedEngine(registry, rng)
    jobs = []  # several searches of different widths and tries in flight together, plus a plain request
    for salt, (beam, n) in enumerate([(1, 50), (4, 120), (12, 200), (30, 300), (200, 300)]):
        trie = make_trie(rng, n)
        search = SearchState([0] * (3 + salt), beam, trie, POSITION_IDS)
        registry[search.search_id] = search
        jobs.append((search, trie, salt))
    engine.add((), None, 3, salt=99)  # an ordinary request sharing the batch
    finished: list[int] = []
    while not all(search.done for search, _, _ in jobs):
        for search, _, salt in jobs:
            engine.submit(search, salt)
        engine.step(finished)
        assert engine.steps <= len(SIZES)  # one SID position per step, all searches in lockstep
    for search, trie, salt in jobs:
        want = reference_search(trie, search.beam, salt)
        got = search.hits()
        assert [h.codes for h in got] == [codes for codes, _ in want]
        np.testing.assert_allclose([h.score for h in got], [s for _, s in want], rtol=0, atol=1e-9)
        assert all(h.codes in trie for h in got)
    assert not engine.batch  # every request ended: continuing ones at max_tokens, dropped ones on STOP


def test_a_beam_missing_from_the_step_fails_its_search_only():
    rng = np.random.default_rng(0)
    registry: dict[int, SearchState] = {}
    trie = make_trie(rng, 200)
    lagging, healthy = (SearchState([0, 0], 8, trie, POSITION_IDS) for _ in range(2))
    registry.update({s.search_id: s for s in (lagging, healthy)})
    engine = SimulatedEngine(registry, rng)
    finished: list[int] = []
    for search in (lagging, healthy):
        engine.submit(search, 0)
    engine.step(finished)  # both fan out
    engine.submit(healthy, 0)
    lagging_forks = lagging.pending
    lagging.pending = [lagging_forks[0]]  # the engine "could not schedule" the rest
    engine.submit(lagging, 0)
    lagging_requests = [
        r for r in engine.batch.values() if r["row"] and r["row"].search_id == lagging.search_id
    ]
    engine.step(finished)
    assert lagging.done and "not scheduled" in lagging.error
    with pytest.raises(RuntimeError, match="not scheduled"):
        lagging.hits()
    assert healthy.error is None and healthy.depth == 2
    assert len(lagging_requests) == 2
    assert all(r["out"][-1] == STOP for r in lagging_requests)  # its requests were ended, not left running


def test_select_beams_ranks_like_a_full_sort_with_ties():
    """Score desc, then parent, then code: the order every engine relies on, ties included."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, width, beam = (int(x) for x in rng.integers(1, 60, size=3))
        scores = np.round(rng.normal(size=n), 1)  # coarse values: many exact ties
        logprobs = np.round(rng.normal(size=(n, width)), 1)
        mask = rng.random((n, width)) < 0.5
        candidates = np.where(mask, scores[:, None] + logprobs, -np.inf).ravel()
        finite = np.flatnonzero(np.isfinite(candidates))
        want = finite[np.lexsort((finite % width, finite // width, -candidates[finite]))][:beam]
        parents, codes, new_scores = select_beams(scores, rng.integers(0, 9, (n, 2)), logprobs, mask, beam)
        np.testing.assert_array_equal(parents * width + codes[:, -1], want)
        np.testing.assert_array_equal(new_scores, candidates[want])
