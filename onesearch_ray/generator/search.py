"""Decoding: code beams under the trie, planned by lexical evidence, then the item step, one ranking.

For each search: the decoder reads the prompt once; at each code level the trie-allowed codes of
every kept prefix are scored (log-probabilities summed along the prefix), each candidate prefix is
*planned* with the best lexical score of an item under it (``SearchConfig.plan_weight``, PAG), and
the best ``beams[level]`` prefixes are kept. The item step then scores every item under the kept
prefixes in one matrix product (dense + lexical + bias), adds ``code_weight`` times the item's
prefix log-probability (BeamFusion), and returns the top ``k`` catalogue rows with their scores.

The decoder itself runs in a :class:`Decoder`: :class:`TorchDecoder` (the reference, the model's own
forward) or ``generator.vllm_decoder.VLLMDecoder`` (vLLM with prompt embeddings); everything else
here is the same for both, so both return the same ranking.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from onesearch_ray.generator.config import SearchConfig
from onesearch_ray.generator.model import CodeItemGenerator, PromptBatch

Ranking = list[tuple[int, float]]  # (catalogue row, score), best first


class Decoder(Protocol):
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
def search(
    model: CodeItemGenerator,
    prompts: PromptBatch,
    k: int,
    config: SearchConfig | None = None,
    decoder: Decoder | None = None,
) -> list[Ranking]:
    """Top-``k`` catalogue rows per search (fewer when the kept prefixes hold fewer items)."""
    config = config or model.config.search
    config.validate(model.codes.levels)
    model.eval()
    decoder = decoder or TorchDecoder(model)
    queries = prompts.query_vectors
    prompt = model.prompt_embeddings(prompts)
    code_part, correction = decoder.last_outputs(prompt, 0)
    # the dense part for the whole batch and catalogue in one product: far cheaper than one
    # gather of the kept items' rows per search (64 ms -> ~1 ms a query on Home Depot)
    dense = model.dense_logits(queries + correction).numpy()
    first_logits = model.code_query_logits(0, queries) + code_part
    trie = _trie(model)
    out = []
    for b in range(len(prompts)):
        lexical = model.lexical_scores(prompts.lexical_terms[b])
        prefixes, log_probs = _plan(
            model, decoder, trie, config, prompt[b : b + 1], queries[b], first_logits[b], lexical
        )
        groups = model.codes.groups(model.codes.levels - 1)
        kept = groups.index_of(trie.prefix_keys(prefixes))
        rows, position = groups.rows_of(kept)
        scores = dense[b, rows]
        scores = scores + lexical[rows] + config.code_weight * log_probs[position]
        top = _top(scores, k)
        out.append(list(zip(rows[top].tolist(), scores[top].astype(float).tolist(), strict=True)))
    return out


def _plan(model, decoder: Decoder, trie, config: SearchConfig, prompt, query_vector, first_logits, lexical):
    """The kept prefixes (n, levels) and their code log-probabilities after the last level."""
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
        groups = model.codes.groups(level)
        best_lexical = groups.group_max(lexical)[groups.index_of(trie.prefix_keys(candidates))]
        planned = total[parent, code] + config.plan_weight * best_lexical
        keep = np.argsort(-planned, kind="stable")[: config.beams[level]]
        prefixes, log_probs = candidates[keep], total[parent[keep], code[keep]]
    return prefixes, log_probs


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores, best first (a partition, then a sort of those k only)."""
    best = np.argpartition(-scores, k)[:k] if len(scores) > k else np.arange(len(scores))
    return best[np.argsort(-scores[best], kind="stable")]


def _trie(model: CodeItemGenerator):
    """The model's code trie, rebuilt when items were added."""
    cached = getattr(model, "_trie_cache", None)
    if cached is None or cached[0] != len(model.codes.item_codes):
        cached = (len(model.codes.item_codes), model.codes.trie())
        model._trie_cache = cached
    return cached[1]
