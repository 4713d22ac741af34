"""Co-purchase: which items follow which, counted over the training searches' histories.

A search whose recent items are ``h1..hw`` and whose targets are ``t1..tn`` adds one to every pair
``(h, t)`` (each recent item once, the last ``window`` only): the co-occurrence baseline's counts
(``retrieval.baselines.CooccurrenceBaseline``), here for the generator's co-purchase term
(``catalogue.lexical.LexicalIndex.with_copurchase``), which starts from ``log(1 + count)``.

A training search must not see its own pairs (its target would always look co-purchased, and the
model would learn to trust counts more than they deserve): ``own_pair_values`` gives what the
search's own pairs added, to take back out of its training logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp


def recent_items(history: Sequence[int], window: int) -> list[int]:
    """The last ``window`` items of a history (oldest first), each once: the co-purchase view."""
    return list(dict.fromkeys(int(i) for i in history[-window:])) if window > 0 else []


def copurchase_counts(
    histories: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], n_items: int, window: int
) -> sp.csr_matrix:
    """(items, items): ``counts[h, t]`` searches with ``h`` among their recent items and ``t`` a target."""
    rows, cols = [], []
    for history, wanted in zip(histories, targets, strict=True):
        recent = recent_items(history, window)
        for target in dict.fromkeys(int(t) for t in wanted):
            rows.extend(recent)
            cols.extend([target] * len(recent))
    ones = np.ones(len(rows), dtype=np.float32)
    counts = sp.csr_matrix((ones, (rows, cols)), shape=(n_items, n_items), dtype=np.float32)
    counts.sum_duplicates()
    return counts


def own_pair_values(postings: sp.csr_matrix, recent_terms: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(targets, recent terms): what a training search's own pairs added to each posting value.

    ``postings``: the lexical index's (items, terms) values, ``log(1 + count)`` in co-purchase
    columns; ``recent_terms``: the search's co-purchase term ids. Without its own pair a count ``c``
    would be ``c - 1``: the value loses ``log(1 + c) - log(c)`` (all of it where ``c`` was 1)."""
    values = postings[targets][:, recent_terms].toarray()
    return (values - np.log(np.maximum(np.expm1(values), 1.0))).astype(np.float32)
