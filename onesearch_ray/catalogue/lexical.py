"""The catalogue's lexical view: BM25's term statistics of the trained catalogue.

``LexicalIndex`` holds what BM25 needs (a term vocabulary, each item's saturated term frequencies
as one sparse items x terms matrix, the terms' IDF). The generator owns one and scores
``score(q, i) = sum_t weight_t * sat(i, t)`` over the query's terms, with ``weight`` its own learned
term weights (initialised at the IDF, so the untrained term IS Lucene BM25): in training as one
sparse product over the catalogue, in search from the live catalogue's postings of the query's
terms (``catalogue.segment``). Tokens are ``text.tokenize``'s (the one tokenizer); the BM25
baseline (``retrieval.BM25Retriever``) is this index too. Items added live keep these length
statistics (``catalogue.live``).

Co-purchase terms (``with_copurchase``): each trained item ``h`` that training histories hold is
also a term, ``item_term(h)``, whose postings are the items that followed it, valued
``log(1 + count(h -> i))``. A search's recent items are then terms like its words
(``item_terms``): the same weights, postings, block-max planning bounds, shards and live
catalogue serve both, and the untrained co-purchase term ranks like the co-occurrence baseline.

Repeat terms (``with_repeat``): ``repeat_term(p, h)`` has one posting, item ``h`` itself (value 1):
a search whose ``p``-th most recent item (0: the last) is ``h`` holds it (``repeat_terms``), so a
weight on it moves the score of re-buying ``h`` (the generator ties them: one weight a position).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from onesearch_ray.text import tokenize

ITEM_TERM_MARK = "\x1f"  # starts a co-purchase term's key; no tokenised word holds it
REPEAT_TERM_MARK = "\x1e"  # starts a repeat term's key


def item_term(row: int) -> str:
    """The vocabulary key of trained item ``row`` as a co-purchase term."""
    return f"{ITEM_TERM_MARK}{int(row)}"


def repeat_term(position: int, row: int) -> str:
    """The vocabulary key of trained item ``row`` as a search's ``position``-th most recent item."""
    return f"{REPEAT_TERM_MARK}{int(position)}:{int(row)}"


def repeat_keys(rows: Sequence[int]) -> list[str]:
    """The repeat-term keys of recent items ``rows`` (oldest first): each item at its latest position."""
    latest = dict.fromkeys(int(r) for r in reversed(rows))
    return [repeat_term(position, row) for position, row in enumerate(latest)]


def hashed_terms(tokens: Sequence[str], buckets: int) -> np.ndarray:
    """Each token's stable hash bucket (crc32): words the catalogue never had still get a row."""
    return np.array([zlib.crc32(t.encode()) % buckets for t in tokens], dtype=np.int64)


def saturation_rows(
    tokens: Sequence[Sequence[str]], vocabulary: dict[str, int], average_length: float, k1: float, b: float
) -> sp.csr_matrix:
    """One row per document: each term's BM25-saturated frequency ``tf / (tf + k1 (1 - b + b len /
    average_length))``, columns in ``vocabulary`` (a term it does not have yet joins it)."""
    rows, cols, values = [], [], []
    for row, doc in enumerate(tokens):
        terms, counts = np.unique(
            [vocabulary.setdefault(t, len(vocabulary)) for t in doc], return_counts=True
        )
        norm = k1 * (1 - b + b * len(doc) / average_length)
        rows.extend([row] * len(terms))
        cols.extend(terms.tolist())
        values.extend((counts / (counts + norm)).tolist())
    return sp.csr_matrix((values, (rows, cols)), shape=(len(tokens), len(vocabulary)), dtype=np.float32)


def lucene_idf(n_items: int, document_frequency: np.ndarray) -> np.ndarray:
    """Lucene's IDF, log(1 + (N - df + 0.5) / (df + 0.5)), per term."""
    df = document_frequency
    return np.log1p((n_items - df + 0.5) / (df + 0.5)).astype(np.float32)


def known_terms(vocabulary: dict[str, int], keys: Sequence[str], known: int) -> np.ndarray:
    """The ids below ``known`` of the ``keys`` the vocabulary has, each once, sorted (a shared
    vocabulary may hold newer ids than a snapshot's weights know)."""
    ids = [vocabulary.get(k, known) for k in keys]
    return np.unique([i for i in ids if i < known]).astype(np.int64)


@dataclass
class LexicalIndex:
    vocabulary: dict[str, int]
    document_frequency: np.ndarray  # (V,) items holding each term
    saturation: sp.csr_matrix  # (items, V): tf / (tf + k1 * (1 - b + b * len / avg_len))
    n_items: int
    average_length: float
    k1: float = 1.5
    b: float = 0.75

    @classmethod
    def build(cls, titles: Sequence[str], k1: float = 1.5, b: float = 0.75) -> LexicalIndex:
        tokens = tokenize(titles)
        lengths = np.array([len(doc) for doc in tokens], dtype=np.float64)
        average_length = float(lengths.mean()) if len(lengths) and lengths.mean() > 0 else 1.0
        vocabulary: dict[str, int] = {}
        saturation = saturation_rows(tokens, vocabulary, average_length, k1, b)
        frequency = np.bincount(saturation.indices, minlength=len(vocabulary)).astype(np.float64)
        return cls(vocabulary, frequency, saturation, len(tokens), average_length, k1, b)

    @property
    def n_terms(self) -> int:
        return len(self.vocabulary)

    def idf(self) -> np.ndarray:
        return lucene_idf(self.n_items, self.document_frequency)

    def query_terms(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Each query's known term ids, each term once (unknown words have no lexical match)."""
        return [known_terms(self.vocabulary, doc, self.n_terms) for doc in tokenize(texts)]

    def item_terms(self, rows: Sequence[int]) -> np.ndarray:
        """The co-purchase term ids of trained item ``rows`` (items no history held have none)."""
        return known_terms(self.vocabulary, [item_term(r) for r in rows], self.n_terms)

    def repeat_terms(self, rows: Sequence[int]) -> np.ndarray:
        """The repeat term ids of recent item ``rows`` (oldest first; see ``with_repeat``)."""
        return known_terms(self.vocabulary, repeat_keys(rows), self.n_terms)

    def repeat_term_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, positions) of every repeat term (``with_repeat``)."""
        marked = (t for t in self.vocabulary if t.startswith(REPEAT_TERM_MARK))
        found = [(self.vocabulary[t], int(t[1:].split(":")[0])) for t in marked]
        ids, positions = zip(*found, strict=True) if found else ((), ())
        return np.array(ids, dtype=np.int64), np.array(positions, dtype=np.int64)

    def with_repeat(self, window: int) -> LexicalIndex:
        """This index plus ``repeat_term(p, h)`` for every item ``h`` and position ``p < window``,
        each posting item ``h`` alone at value 1."""
        vocabulary = dict(self.vocabulary)
        n = self.n_items
        for position in range(window):
            vocabulary.update({repeat_term(position, h): self.n_terms + position * n + h for h in range(n)})
        postings = sp.hstack([sp.identity(n, np.float32, format="csr")] * window, format="csr")
        saturation = sp.hstack([self.saturation, postings], format="csr", dtype=np.float32)
        frequency = np.bincount(saturation.indices, minlength=len(vocabulary)).astype(np.float64)
        return LexicalIndex(vocabulary, frequency, saturation, n, self.average_length, self.k1, self.b)

    def copurchase_term_ids(self) -> np.ndarray:
        """The ids of every co-purchase term (``with_copurchase``)."""
        return np.array(
            [i for t, i in self.vocabulary.items() if t.startswith(ITEM_TERM_MARK)], dtype=np.int64
        )

    def with_copurchase(self, counts: sp.spmatrix) -> LexicalIndex:
        """This index plus one co-purchase term per row of ``counts`` (items x items: how often item
        i followed history item h) that has a count, valued ``log(1 + count)``."""
        counts = sp.csr_matrix(counts, dtype=np.float32)
        if counts.shape != (self.n_items, self.n_items):
            raise ValueError(f"co-purchase counts {counts.shape} for a catalogue of {self.n_items} items")
        held = np.flatnonzero(np.diff(counts.indptr))
        vocabulary = dict(self.vocabulary)
        vocabulary.update({item_term(h): self.n_terms + j for j, h in enumerate(held)})
        postings = counts[held].T.tocsr()  # (items, new terms)
        postings.data = np.log1p(postings.data)
        saturation = sp.hstack([self.saturation, postings], format="csr", dtype=np.float32)
        frequency = np.bincount(saturation.indices, minlength=len(vocabulary)).astype(np.float64)
        return LexicalIndex(
            vocabulary, frequency, saturation, self.n_items, self.average_length, self.k1, self.b
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        terms = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        m = self.saturation
        return {
            "lex_terms": np.array(terms, dtype=np.str_),
            "lex_data": m.data,
            "lex_indices": m.indices,
            "lex_indptr": m.indptr,
            "lex_stats": np.array([self.n_items, self.average_length, self.k1, self.b], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LexicalIndex:
        n_items, average_length, k1, b = arrays["lex_stats"].tolist()
        terms = arrays["lex_terms"].tolist()
        matrix = sp.csr_matrix(
            (arrays["lex_data"], arrays["lex_indices"], arrays["lex_indptr"]),
            shape=(int(n_items), len(terms)),
        )
        df = np.bincount(matrix.indices, minlength=len(terms)).astype(np.float64)
        return cls({t: i for i, t in enumerate(terms)}, df, matrix, int(n_items), average_length, k1, b)
