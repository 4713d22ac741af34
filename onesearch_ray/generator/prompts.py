"""One search's views as the generator's prompt: continuous vectors and term ids, no BPE text.

A search is a query text (may be empty), its frozen text vector, and optionally the user's recent
items (catalogue rows, oldest first). Without a query (next-item tracks) the query vector is the
mean vector of the last ``RECENT_ITEMS`` history items, the dense-history view; a new user
simply has no history rows, and the behaviour slots then hold the model's "absent" embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from onesearch_ray.behavior.copurchase import recent_items
from onesearch_ray.behavior.views import RECENT_ITEMS
from onesearch_ray.catalogue.lexical import hashed_terms
from onesearch_ray.generator.model import PromptBatch
from onesearch_ray.retrieval.baselines import normalise_rows
from onesearch_ray.text import MAX_QUERY_CHARS, tokenize


class Vocabulary(Protocol):
    """What maps query texts and recent items to term ids: the model's ``LexicalIndex`` or a live
    catalogue snapshot."""

    def query_terms(self, texts: Sequence[str]) -> list[np.ndarray]: ...

    def item_terms(self, rows: Sequence[int]) -> np.ndarray: ...

    def repeat_terms(self, rows: Sequence[int]) -> np.ndarray: ...


def build_prompts(
    lexical: Vocabulary,
    hash_buckets: int,
    query_texts: Sequence[str],
    query_vectors: np.ndarray,
    item_vectors: np.ndarray,
    histories: Sequence[Sequence[int]] | None = None,
    history: int = 0,
    copurchase_window: int = 0,
    history_items: Sequence[Sequence[int]] | None = None,
    repeat_window: int = 0,
) -> PromptBatch:
    """The prompts of a batch of searches (``histories``: rows of ``item_vectors``, each user's recent
    items). The last ``copurchase_window`` of them join the lexical terms as co-purchase terms, by
    their model rows: ``history_items`` when ``item_vectors`` is not the model's (serving), else
    ``histories`` themselves; the last ``repeat_window`` of them join as repeat terms alike."""
    texts = [str(t)[:MAX_QUERY_CHARS] for t in query_texts]  # huge inputs stay cheap
    queries = normalise_rows(query_vectors)
    rows = [list(h)[-history:] if history else [] for h in (histories or [[]] * len(texts))]
    if len(rows) != len(texts) or len(queries) != len(texts):
        raise ValueError(f"{len(texts)} queries, {len(queries)} query vectors, {len(rows)} histories")
    for i, text in enumerate(texts):
        recent = list(histories[i])[-RECENT_ITEMS:] if histories is not None else []
        if not text.strip() and recent:
            queries[i] = normalise_rows(item_vectors[recent].mean(0))[0]
    words = [hashed_terms(tokens, hash_buckets) for tokens in tokenize(texts)]
    offsets = np.cumsum([0] + [len(w) for w in words[:-1]])
    terms, copurchase = lexical.query_terms(texts), None
    model_rows = histories if history_items is None else history_items
    if copurchase_window and model_rows is not None:
        copurchase = [lexical.item_terms(recent_items(items, copurchase_window)) for items in model_rows]
        terms = [np.union1d(words_of, own) for words_of, own in zip(terms, copurchase, strict=True)]
    if repeat_window and model_rows is not None:
        repeats = [lexical.repeat_terms(list(items)[-repeat_window:]) for items in model_rows]
        terms = [np.union1d(words_of, own) for words_of, own in zip(terms, repeats, strict=True)]
    batch = PromptBatch(
        torch.as_tensor(queries),
        torch.as_tensor(np.concatenate(words) if words else np.zeros(0, np.int64)),
        torch.as_tensor(offsets, dtype=torch.long),
        terms,
        copurchase,
    )
    if history:
        vectors = np.zeros((len(texts), history, item_vectors.shape[1]), dtype=np.float32)
        mask = np.zeros((len(texts), history), dtype=bool)
        for i, recent in enumerate(rows):
            if recent:
                vectors[i, -len(recent) :] = item_vectors[recent]
                mask[i, -len(recent) :] = True
        batch.history_vectors, batch.history_mask = torch.as_tensor(vectors), torch.as_tensor(mask)
    return batch
