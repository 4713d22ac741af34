"""Trie-constrained beam search over SIDs, behind one small engine interface.

Scoring rule (every engine uses it, so engines agree on scores and top-K): a SID's score is the
sum over its P tokens of the model's log-softmax over the FULL vocabulary, taken only over tokens
the trie allows (masked, NOT renormalised) — the same numbers transformers' ``generate`` with
``prefix_allowed_tokens_fn`` produces. Ties break by lower code tuple.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from onesearch_ray.decoding.trie import SidTrie
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer
from onesearch_ray.prompts.tokenizer import encode_prompts, prompt_block


class SearchLimitError(ValueError):
    """A search the engine cannot run as asked (prompt too long, beam too wide): the caller's to fix."""


@dataclass(frozen=True)
class SidHit:
    codes: tuple[int, ...]
    score: float


class DecodingEngine(Protocol):
    """Generates the best valid SIDs for prompts. Implementations: transformers (here), vLLM (serving)."""

    def search(self, prompts: Sequence[str], beam: int) -> list[list[SidHit]]: ...

    def set_trie(self, trie: SidTrie) -> None:
        """Swap the SID constraint atomically; searches already running keep the trie they started with."""


def select_beams(
    scores: np.ndarray, codes: np.ndarray, sid_logprobs: np.ndarray, mask: np.ndarray, beam: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One beam step: extend every beam by every allowed code, keep the best ``beam``.

    scores (B,), codes (B, depth), sid_logprobs/mask (B, K). Returns (parents, new_codes, new_scores).
    """
    candidates = np.where(mask, scores[:, None] + sid_logprobs, -np.inf)
    flat = candidates.ravel()
    finite = np.flatnonzero(np.isfinite(flat))
    if len(finite) == 0:
        return np.zeros(0, np.int64), np.zeros((0, codes.shape[1] + 1), np.int64), np.zeros(0)
    if len(finite) > beam:  # only candidates scoring at least the beam-th best can win (ties kept)
        values = flat[finite]
        finite = finite[values >= np.partition(values, len(values) - beam)[len(values) - beam]]
    width = candidates.shape[1]
    # order: score desc, then (parent codes, code) asc for deterministic ties
    order = np.lexsort((finite % width, finite // width, -flat[finite]))[:beam]
    chosen = finite[order]
    parents, next_codes = chosen // width, chosen % width
    new_codes = np.concatenate([codes[parents], next_codes[:, None]], axis=1)
    return parents, new_codes, flat[chosen]


class TransformersEngine:
    """Reference engine: a Hugging Face causal LM with a KV cache, one prompt at a time."""

    def __init__(self, model, tokenizer, position_token_ids: Sequence[np.ndarray], trie: SidTrie) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.prompt_block = prompt_block(model.config)
        self.position_token_ids = [torch.as_tensor(ids, dtype=torch.long) for ids in position_token_ids]
        self.trie = trie

    @classmethod
    def for_catalogue(cls, model, tokenizer, sids: SemanticIdTokenizer) -> TransformersEngine:
        """The engine constrained to every SID of ``sids``' catalogue."""
        from onesearch_ray.prompts import SidVocabulary

        vocabulary = SidVocabulary.from_tokenizers(tokenizer, sids)
        return cls(model, tokenizer, vocabulary.position_token_ids, SidTrie.of_catalogue(sids))

    def set_trie(self, trie: SidTrie) -> None:
        self.trie = trie

    @torch.inference_mode()
    def search(self, prompts: Sequence[str], beam: int) -> list[list[SidHit]]:
        return [self._search_one(prompt, beam) for prompt in prompts]

    def _search_one(self, prompt: str, beam: int) -> list[SidHit]:
        device = next(self.model.parameters()).device
        input_ids = torch.tensor(encode_prompts(self.tokenizer, [prompt], self.prompt_block), device=device)
        output = self.model(input_ids=input_ids, use_cache=True)
        past, logits = output.past_key_values, output.logits[:, -1, :]
        trie = self.trie  # one version for the whole request
        codes = np.zeros((1, 0), dtype=np.int64)
        scores = np.zeros(1)
        for depth in range(trie.depth):
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            sid_logprobs = logprobs[:, self.position_token_ids[depth].to(device)].cpu().numpy()
            parents, codes, scores = select_beams(scores, codes, sid_logprobs, trie.allowed_mask(codes), beam)
            if len(codes) == 0 or depth == trie.depth - 1:
                break
            parent_index = torch.as_tensor(parents, device=device)
            past.reorder_cache(parent_index)
            next_ids = self.position_token_ids[depth][torch.as_tensor(codes[:, -1])].to(device)[:, None]
            output = self.model(input_ids=next_ids, past_key_values=past, use_cache=True)
            past, logits = output.past_key_values, output.logits[:, -1, :]
        return [SidHit(tuple(int(c) for c in row), float(s)) for row, s in zip(codes, scores, strict=True)]


def hits_to_items(hits: Sequence[SidHit], items_for_sid, k: int) -> list[int]:
    """Expand SIDs (best first) into items; a SID shared by several items yields all of them."""
    ranked: list[int] = []
    for hit in hits:
        ranked.extend(items_for_sid(hit.codes))
        if len(ranked) >= k:
            break
    return ranked[:k]
