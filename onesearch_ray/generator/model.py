"""The CPU-first generator: prompt embeddings -> a small Qwen3 decoder -> KHQE codes -> the item step.

Every head starts from pretrained geometry and learns a zero-initialised correction, so the
untrained model already searches (code scores are ``<query, residual centroid>``, item scores
``<query, item vector>`` plus Lucene BM25) and training can only move away from that on purpose:

- prompt: the frozen query vector, a bag of hashed query words, and (with ``history``) the user's
  recent item vectors and their mean (long-term view), each projected to the decoder width;
- code level l: ``code_scale * <q + A_l h, centroid_l> + bias_l`` at the decoder's l-th output;
- item step: ``dense_scale * <q + B h, v_i + offset_i> + bias_i + lexical_scale * sum_t w_t sat(i, t)``
  where ``v_i`` is the item's own text vector and ``w`` the model's term weights (IDF at start);
  with ``copurchase_window`` the user's recent items are terms too, their postings the items that
  followed them in training (``behavior.copurchase``; weight ``copurchase_weight`` at start);
  with ``repeat_window`` the last items score themselves, one weight a recency position (0 at start).

A new item needs nothing trained: its row is its text vector (offset and bias 0) and its title's
terms, its codes come from the frozen codebooks; it joins the live catalogue the item step reads
(``generator.items``, ``onesearch_ray.catalogue``), not the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import Qwen3Config, Qwen3Model

from onesearch_ray.catalogue.lexical import LexicalIndex
from onesearch_ray.generator.codes import CodeTree
from onesearch_ray.generator.config import GeneratorConfig


@dataclass
class PromptBatch:
    """The views of a batch of searches, ready for the model (see ``generator.prompts``)."""

    query_vectors: torch.Tensor  # (B, D) the frozen text vector (or the history's mean without a query)
    hashed_words: torch.Tensor  # (W,) hashed query words of the whole batch, for an EmbeddingBag
    word_offsets: torch.Tensor  # (B,) where each search's words start in ``hashed_words``
    lexical_terms: list[np.ndarray]  # per search: term ids in the lexical index (words, recent items)
    copurchase_terms: list[np.ndarray] | None = None  # per search: the recent items' terms among them
    history_vectors: torch.Tensor | None = None  # (B, H, D) most recent last, zeros where absent
    history_mask: torch.Tensor | None = None  # (B, H) True where a history item is present

    def __len__(self) -> int:
        return len(self.query_vectors)


class CodeItemGenerator(nn.Module):
    def __init__(
        self, config: GeneratorConfig, item_vectors: np.ndarray, codes: CodeTree, lexical: LexicalIndex
    ):
        super().__init__()
        config.validate()
        if codes.levels != config.code_levels:
            raise ValueError(f"code tree has {codes.levels} levels, the config {config.code_levels}")
        self.config, self.codes, self.lexical = config, codes, lexical
        dim = item_vectors.shape[1]
        width = config.decoder.hidden_size
        self.query_in = nn.Linear(dim, width)
        self.words_in = nn.EmbeddingBag(config.hash_buckets, width, mode="mean")
        nn.init.normal_(self.words_in.weight, std=0.02)
        if config.history:
            self.history_in = nn.Linear(dim, width)
            self.profile_in = nn.Linear(dim, width)
            self.absent = nn.Parameter(torch.zeros(width))  # the slot of a missing history item
        self.code_in = nn.ModuleList(nn.Embedding(size, width) for size in codes.level_sizes[:-1])
        d = config.decoder
        self.decoder = Qwen3Model(
            Qwen3Config(
                vocab_size=1,
                hidden_size=width,
                intermediate_size=d.intermediate_size,
                num_hidden_layers=d.num_layers,
                num_attention_heads=d.num_heads,
                num_key_value_heads=d.num_kv_heads,
                head_dim=d.head_dim,
                max_position_embeddings=64,
            )
        )
        self.code_correction = nn.ModuleList(_zero_linear(width, dim) for _ in codes.level_sizes)
        self.code_bias = nn.ParameterList(nn.Parameter(torch.zeros(size)) for size in codes.level_sizes)
        self.item_correction = _zero_linear(width, dim)
        self.register_buffer("item_vectors", torch.as_tensor(item_vectors, dtype=torch.float32))
        for level, centroid in enumerate(codes.centroids):
            self.register_buffer(f"centroids_{level}", torch.as_tensor(centroid))
        self.item_offset = nn.Parameter(torch.zeros_like(self.item_vectors))
        self.item_bias = nn.Parameter(torch.zeros(len(item_vectors)))
        weights = lexical.idf()
        weights[lexical.copurchase_term_ids()] = config.copurchase_weight
        self.term_weight = nn.Parameter(torch.as_tensor(weights))
        if config.repeat_window:  # the repeat terms' weights, tied by position (``term_weights``)
            self.repeat_weight = nn.Parameter(torch.zeros(config.repeat_window))
            ids, positions = lexical.repeat_term_positions()
            self.register_buffer("repeat_ids", torch.as_tensor(ids), persistent=False)
            self.register_buffer("repeat_positions", torch.as_tensor(positions), persistent=False)
        self.log_dense_scale = nn.Parameter(torch.tensor(float(np.log(config.dense_scale))))
        self.log_lexical_scale = nn.Parameter(torch.tensor(float(np.log(config.lexical_scale))))
        self.log_code_scale = nn.Parameter(torch.tensor(float(np.log(config.code_scale))))

    @property
    def n_items(self) -> int:
        return len(self.item_vectors)

    # --- the prompt and the decoder ------------------------------------------------------------

    def prompt_embeddings(self, prompts: PromptBatch) -> torch.Tensor:
        """(B, P, width): query vector, hashed words, then the behaviour views when configured."""
        views = [
            self.query_in(prompts.query_vectors),
            self.words_in(prompts.hashed_words, prompts.word_offsets),
        ]
        if self.config.history:
            history, present = prompts.history_vectors, prompts.history_mask
            items = torch.where(present[..., None], self.history_in(history), self.absent)
            count = present.sum(1, keepdim=True).clamp(min=1)
            profile = self.profile_in((history * present[..., None]).sum(1) / count)
            return torch.cat([torch.stack(views, 1), items, profile[:, None]], 1)
        return torch.stack(views, 1)

    def sequence(self, prompt: torch.Tensor, code_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's input embeddings: [prompt; embeddings of the given code prefix]."""
        parts = [prompt]
        if code_prefix is not None:
            parts += [
                self.code_in[level](code_prefix[:, level])[:, None] for level in range(code_prefix.shape[1])
            ]
        return torch.cat(parts, 1)

    def hidden(self, prompt: torch.Tensor, code_prefix: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder outputs over [prompt; embeddings of the given code prefix] (B, P + levels, width)."""
        return self.decoder(inputs_embeds=self.sequence(prompt, code_prefix)).last_hidden_state

    # --- heads ---------------------------------------------------------------------------------
    # Each head is a query part plus a linear map of the decoder output: the linear maps are what
    # an LM head can hold (``generator.vllm_decoder`` serves them as vLLM's vocabulary rows).

    def code_logits(self, level: int, hidden: torch.Tensor, query_vectors: torch.Tensor) -> torch.Tensor:
        """(B, level_size) logits of code level ``level`` from that step's decoder output."""
        return self.code_query_logits(level, query_vectors) + hidden @ self.code_head(level).T

    def code_query_logits(self, level: int, query_vectors: torch.Tensor) -> torch.Tensor:
        """The query's part of code level ``level``'s logits: ``code_scale * <q, centroid> + bias``."""
        centroids = getattr(self, f"centroids_{level}")
        return self.log_code_scale.exp() * query_vectors @ centroids.T + self.code_bias[level]

    def code_head(self, level: int) -> torch.Tensor:
        """(level_size, width): the decoder output's part, ``code_scale * <A_l h, centroid>``."""
        centroids = getattr(self, f"centroids_{level}")
        return self.log_code_scale.exp() * centroids @ self.code_correction[level].weight

    def item_query(self, hidden: torch.Tensor, query_vectors: torch.Tensor) -> torch.Tensor:
        return query_vectors + self.item_correction(hidden)

    def dense_logits(self, item_query: torch.Tensor) -> torch.Tensor:
        """(B, items) dense part of the item step over the whole catalogue."""
        vectors = self.item_vectors + self.item_offset
        return self.log_dense_scale.exp() * item_query @ vectors.T + self.item_bias

    def term_weights(self) -> torch.Tensor:
        """(terms,) every lexical term's weight: ``term_weight``, the repeat terms' from their position."""
        if not self.config.repeat_window:
            return self.term_weight
        return self.term_weight.index_put((self.repeat_ids,), self.repeat_weight[self.repeat_positions])

    def lexical_logits(self, lexical_terms: list[np.ndarray]) -> torch.Tensor:
        """(B, items) the lexical match of each search with every item, differentiable in the weights."""
        indicator = self._term_indicator(lexical_terms)
        scores = torch.sparse.mm(self._saturation(), (indicator * self.term_weights()).T).T
        return self.log_lexical_scale.exp() * scores

    def lexical_logits_of(self, lexical_terms: list[np.ndarray], rows: np.ndarray) -> torch.Tensor:
        """(B, len(rows)) ``lexical_logits`` of catalogue ``rows`` only, over the batch's own terms: a
        cost set by the rows and the terms, not by the catalogue or its vocabulary."""
        terms = np.unique(np.concatenate([np.zeros(0, np.int64), *lexical_terms]))
        if not len(terms):
            return torch.zeros(len(lexical_terms), len(rows))
        indicator = self._term_indicator(lexical_terms, terms)
        saturation = torch.as_tensor(self.lexical.saturation[rows][:, terms].toarray())
        weighted = indicator * self.term_weights()[torch.as_tensor(terms)]
        return self.log_lexical_scale.exp() * weighted @ saturation.T

    def _term_indicator(
        self, lexical_terms: list[np.ndarray], columns: np.ndarray | None = None
    ) -> torch.Tensor:
        """(B, terms) 1 where a search holds a term: a column per term of the vocabulary, or per term
        of the sorted ``columns``."""
        width = self.lexical.n_terms if columns is None else len(columns)
        indicator = torch.zeros(len(lexical_terms), width)
        for row, terms in enumerate(lexical_terms):
            at = terms if columns is None else np.searchsorted(columns, terms)
            indicator[row, torch.as_tensor(at)] = 1.0
        return indicator

    def _saturation(self) -> torch.Tensor:
        cached = getattr(self, "_saturation_tensor", None)
        if cached is None or cached.shape[0] != self.lexical.n_items:
            coo = self.lexical.saturation.tocoo()
            indices = torch.as_tensor(np.vstack([coo.row, coo.col]), dtype=torch.long)
            values = torch.as_tensor(coo.data, dtype=torch.float32)
            cached = torch.sparse_coo_tensor(indices, values, coo.shape, check_invariants=False).coalesce()
            self._saturation_tensor = cached
        return cached


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out, bias=False)
    nn.init.zeros_(layer.weight)
    return layer
