"""Keyword enhancement (KHQE's "K"): a keyphrase lexicon, Aho-Corasick matching, fused vectors.

The lexicon is built from the data: frequent query n-grams (what users actually type) plus the
values of item attributes (brand, colour, material, ...). Matching is Aho-Corasick over normalised
text, restricted to whole words, longest match first, non-overlapping.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import ahocorasick
import numpy as np

from onesearch_ray.khqe.config import LexiconConfig
from onesearch_ray.text import STOPWORDS, normalize_text

QUERY_NGRAM = "query_ngram"


@dataclass
class KeyphraseLexicon:
    """Phrase -> attribute type, with an Aho-Corasick automaton built lazily."""

    phrases: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._automaton: ahocorasick.Automaton | None = None

    @classmethod
    def build(
        cls,
        queries: Iterable[str],
        item_attributes: Iterable[Mapping[str, str] | None] = (),
        config: LexiconConfig | None = None,
    ) -> KeyphraseLexicon:
        config = config or LexiconConfig()
        phrases: dict[str, str] = {}
        for attributes in item_attributes:
            for attr_type, value in (attributes or {}).items():
                phrase = normalize_text(value or "")
                if _is_keyphrase(phrase, config):
                    phrases.setdefault(phrase, attr_type)
        counts = _query_ngram_counts(queries, config.max_ngram)
        frequent = [
            (p, c) for p, c in counts.items() if c >= config.min_query_count and _is_keyphrase(p, config)
        ]
        frequent.sort(key=lambda pc: (-pc[1], pc[0]))
        for phrase, _ in frequent:
            if len(phrases) >= config.max_phrases:
                break
            phrases.setdefault(phrase, QUERY_NGRAM)
        return cls(phrases)

    def __len__(self) -> int:
        return len(self.phrases)

    def vocabulary(self) -> list[str]:
        """Phrases in a stable order (the row order of the phrase embedding matrix)."""
        return sorted(self.phrases)

    def match(self, text: str) -> list[str]:
        """Keyphrases in ``text``: whole words only, longest first, non-overlapping."""
        normalized = normalize_text(text)
        if not normalized or not self.phrases:
            return []
        candidates = []
        for end, phrase in self._get_automaton().iter(normalized):
            start = end - len(phrase) + 1
            if _on_word_boundaries(normalized, start, end):
                candidates.append((start, end, phrase))
        candidates.sort(key=lambda c: (-(c[1] - c[0]), c[0]))
        taken: list[tuple[int, int]] = []
        chosen: list[tuple[int, str]] = []
        for start, end, phrase in candidates:
            if all(end < s or start > e for s, e in taken):
                taken.append((start, end))
                chosen.append((start, phrase))
        return [phrase for _, phrase in sorted(chosen)]

    def to_json(self) -> dict:
        return {"phrases": self.phrases}

    @classmethod
    def from_json(cls, payload: Mapping) -> KeyphraseLexicon:
        phrases = payload.get("phrases")
        if not isinstance(phrases, dict):
            raise ValueError("keyphrase lexicon: 'phrases' must be an object of phrase -> type")
        return cls(dict(phrases))

    def _get_automaton(self) -> ahocorasick.Automaton:
        if self._automaton is None:
            automaton = ahocorasick.Automaton()
            for phrase in self.phrases:
                automaton.add_word(phrase, phrase)
            automaton.make_automaton()
            self._automaton = automaton
        return self._automaton


def fuse_keyword_embeddings(
    text_vectors: np.ndarray,
    matched: list[list[int]],
    phrase_vectors: np.ndarray,
    text_weight: float = 0.5,
) -> np.ndarray:
    """e' = normalize(w * e + (1 - w) * mean(e_keywords)); rows with no keyword keep e."""
    fused = np.array(text_vectors, dtype=np.float32, copy=True)
    for row, phrase_rows in enumerate(matched):
        if phrase_rows:
            keyword_mean = phrase_vectors[phrase_rows].mean(axis=0)
            fused[row] = text_weight * fused[row] + (1.0 - text_weight) * keyword_mean
    norms = np.linalg.norm(fused, axis=1, keepdims=True)
    return fused / np.maximum(norms, 1e-12)


def _query_ngram_counts(queries: Iterable[str], max_ngram: int) -> Counter:
    counts: Counter = Counter()
    for query in queries:
        words = normalize_text(query).split()
        seen = {
            " ".join(words[i : i + n]) for n in range(1, max_ngram + 1) for i in range(len(words) - n + 1)
        }
        counts.update(seen)  # document frequency: a phrase counts once per query
    return counts


def _is_keyphrase(phrase: str, config: LexiconConfig) -> bool:
    words = phrase.split()
    if len(phrase) < config.min_phrase_chars or not words:
        return False
    if words[0] in STOPWORDS or words[-1] in STOPWORDS:
        return False
    return not all(word.replace(".", "").isdigit() for word in words)


def _on_word_boundaries(text: str, start: int, end: int) -> bool:
    return (start == 0 or text[start - 1] == " ") and (end == len(text) - 1 or text[end + 1] == " ")


def match_rows(lexicon: KeyphraseLexicon, texts: Iterable[str]) -> list[list[int]]:
    """For each text, the rows (in ``lexicon.vocabulary()`` order) of the keyphrases it contains."""
    row_of = {phrase: row for row, phrase in enumerate(lexicon.vocabulary())}
    return [[row_of[phrase] for phrase in lexicon.match(text)] for text in texts]
