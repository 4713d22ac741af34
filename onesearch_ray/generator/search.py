"""Decoding: code beams under the trie, planned by lexical evidence, then the item step, one ranking.

For each search: the decoder reads the prompt once; at each code level the trie-allowed codes of
every kept prefix are scored (log-probabilities summed along the prefix), each candidate prefix is
*planned* with a bound on the best lexical score of an item under it (``SearchConfig.plan_weight``,
PAG; the catalogue's block-max per group, no item read), and the best ``beams[level]`` prefixes
are kept. When they hold more than ``max_items`` items, deeper SID levels of the catalogue's index
are planned the same way by the untrained code geometry until the kept items fit (``_refine``).
The item step then scores only the items under the kept prefixes, read as contiguous slices of the
catalogue's snapshot (dense + lexical postings + bias), adds ``code_weight`` times the item's prefix
log-probability (BeamFusion), and returns the top ``k`` items with their scores. The cost of a
search is set by what the codes keep, not by the catalogue's size.

The decoder itself runs in a :class:`DecodingEngine` (named apart from ``model.decoder``, the Qwen3
module it runs): :class:`TorchDecoder` (the reference, the model's own forward) or
``generator.vllm_decoder.VLLMDecoder`` (vLLM with prompt embeddings); everything else here is the
same for both, so both return the same ranking.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from onesearch_ray.catalogue import Snapshot
from onesearch_ray.generator.config import SearchConfig
from onesearch_ray.generator.items import model_catalogue
from onesearch_ray.generator.model import CodeItemGenerator, PromptBatch

Ranking = list[tuple[int, float]]  # (item id, or model row, and score), best first


class DecodingEngine(Protocol):
    def last_outputs(self, sequences: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        """For input embeddings (n, T, width): at the last position, code level ``level``'s head
        (``model.code_head``) and the item correction (``model.item_correction``) of the output."""
        ...


class TorchDecoder:
    """The reference engine: the model's own decoder forward."""

    def __init__(self, model: CodeItemGenerator) -> None:
        self.model = model

    def last_outputs(self, sequences: torch.Tensor, level: int) -> tuple[torch.Tensor, torch.Tensor]:
        last = self.model.decoder(inputs_embeds=sequences).last_hidden_state[:, -1]
        return last @ self.model.code_head(level).T, self.model.item_correction(last)


@torch.no_grad()
def beam_search(
    model: CodeItemGenerator,
    prompts: PromptBatch,
    k: int,
    config: SearchConfig | None = None,
    decoder: DecodingEngine | None = None,
    catalogue: Snapshot | None = None,
) -> list[Ranking]:
    """Top-``k`` items per search (fewer when the kept prefixes hold fewer items): catalogue item ids
    with their scores; without ``catalogue`` the model's own rows (a training-time search)."""
    config = config or model.config.search
    config.validate(model.codes.levels)
    model.eval()
    decoder = decoder or TorchDecoder(model)
    catalogue = catalogue or model_catalogue(model).snapshot
    queries = prompts.query_vectors
    prompt = model.prompt_embeddings(prompts)
    code_part, correction = decoder.last_outputs(prompt, 0)
    item_queries = (model.log_dense_scale.exp() * (queries + correction)).numpy()
    first_logits = model.code_query_logits(0, queries) + code_part
    code_scale = float(model.log_code_scale.exp())
    trie = _trie(model)
    plans, terms = [], prompts.lexical_terms
    for b in range(len(prompts)):
        prefixes, log_probs = _plan(
            model, decoder, trie, config, prompt[b : b + 1], queries[b], first_logits[b], catalogue, terms[b]
        )
        level, keys, log_probs = _refine(
            catalogue,
            config,
            model.codes.levels - 1,
            trie.prefix_keys(prefixes),
            log_probs,
            code_scale * queries[b].numpy(),
            terms[b],
        )
        plans.append((level, keys, config.code_weight * log_probs))
    found = catalogue.top_items(plans, item_queries, terms, k)
    return [list(zip(ids.tolist(), scores.astype(float).tolist(), strict=True)) for ids, scores in found]


def _plan(
    model,
    decoder: DecodingEngine,
    trie,
    config: SearchConfig,
    prompt,
    query_vector,
    first_logits,
    catalogue,
    terms,
):
    """The kept prefixes (n, levels) and their code log-probabilities after the last decoded level."""
    prefixes = np.zeros((1, 0), dtype=np.int64)
    log_probs = np.zeros(1, dtype=np.float32)
    for level in range(model.codes.levels):
        if level == 0:
            logits = first_logits[None]
        else:
            sequences = model.sequence(prompt.expand(len(prefixes), -1, -1), torch.as_tensor(prefixes))
            code_part, _ = decoder.last_outputs(sequences, level)
            logits = model.code_query_logits(level, query_vector.expand(len(prefixes), -1)) + code_part
        allowed = torch.as_tensor(trie.allowed_mask(prefixes))
        step = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), -1).numpy()
        total = log_probs[:, None] + step
        parent, code = np.nonzero(np.isfinite(total))
        candidates = np.hstack([prefixes[parent], code[:, None]])
        _, bound = catalogue.group_facts(level, trie.prefix_keys(candidates), terms)
        planned = total[parent, code] + config.plan_weight * np.maximum(bound, _ABSENT)
        keep = np.argsort(-planned, kind="stable")[: config.beams[level]]
        prefixes, log_probs = candidates[keep], total[parent[keep], code[keep]]
    return prefixes, log_probs


def _refine(
    catalogue: Snapshot,
    config: SearchConfig,
    level: int,
    keys: np.ndarray,
    log_probs: np.ndarray,
    scaled_query: np.ndarray,
    terms: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """While the kept prefixes hold more than ``config.max_items`` items and the catalogue is indexed
    deeper: score each kept prefix's children by the untrained code head (``code_scale * <q,
    residual centroid>``, normalised within the parent) plus the planning bound, and keep the best
    children that fit the budget (at least one). Returns the level, keys and log-probabilities kept."""
    sizes, _ = catalogue.group_facts(level, keys, terms[:0])
    while level + 1 < len(catalogue.level_sizes) and sizes.sum() > config.max_items:
        order = np.argsort(keys)
        keys, log_probs = keys[order], log_probs[order]
        size = catalogue.level_sizes[level + 1]
        children = catalogue.children(level, keys)
        parent = np.searchsorted(keys, children // size)
        logits = (catalogue.centroids[level + 1] @ scaled_query)[children % size]  # one product per code
        firsts = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
        norm = np.logaddexp.reduceat(logits.astype(np.float64), firsts)
        total = log_probs[parent] + logits - np.repeat(norm, np.diff(np.r_[firsts, len(parent)]))
        sizes, bound = catalogue.group_facts(level + 1, children, terms)
        planned = total + config.plan_weight * np.maximum(bound, _ABSENT)
        ranked = np.argsort(-planned, kind="stable")
        fits = int(np.searchsorted(np.cumsum(sizes[ranked]), config.max_items, "right"))
        keep = ranked[: max(1, fits)]
        level, keys, log_probs, sizes = level + 1, children[keep], total[keep].astype(np.float32), sizes[keep]
    return level, keys, log_probs


_ABSENT = -1e6  # the bound of a prefix no item holds: never planned ahead of one that has items


def _trie(model: CodeItemGenerator):
    """The model's code trie: the prefixes it can generate (items added later join existing SIDs,
    so it never changes after training)."""
    cached = getattr(model, "_trie_cache", None)
    if cached is None:
        cached = model._trie_cache = model.codes.trie()
    return cached
