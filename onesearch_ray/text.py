"""The words of a text: one tokenizer for everything that reads words.

- ``tokenize``: BM25's tokens. Latin-script text: bm25s's (lower case, words of 2+ characters,
  English stopwords out, Snowball stemmer). CJK text, written without spaces: each CJK character is
  a token of its own. The catalogue's lexical
  index, hence the generator's lexical term, its prompt's hashed words and the BM25 baseline, all
  read these tokens, so the model and its baseline never part.
- ``normalize_text``: the keyphrase form KHQE's lexicon is built and matched in (lower case, word
  tokens kept whole and unstemmed: "1/2 in." stays "1/2 in"; a CJK character is a word of its own,
  so a Chinese keyphrase matches wherever its characters stand in a title).

Text without CJK characters tokenizes exactly as before CJK support (English tracks unchanged).
Why characters rather than bigrams or a dictionary segmenter (jieba): measured on the synthetic
Chinese track's valid queries (docs/benchmarks.md, "CJK tokens"); a segmenter also cuts a title and a
query of the same product differently, where characters cannot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import bm25s
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

MAX_QUERY_CHARS = 512  # a query is cut here (the API refuses longer ones; prompts cut before tokenising)
STOPWORDS = frozenset(STOPWORDS_EN)

_STEMMER = Stemmer.Stemmer("english")
# Hiragana/Katakana, CJK ideographs (and extension A), Hangul syllables
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_PHRASE_TOKEN = re.compile(f"[a-z0-9]+(?:[.\\-/][a-z0-9]+)*|[{_CJK}]")


def tokenize(texts: Sequence[str], segment: Callable[[str], list[str]] = list) -> list[list[str]]:
    """BM25's tokens of each text: Latin words lower-cased, stopwords out, stemmed; each CJK run cut
    by ``segment`` (its characters; ``bench/cjk_tokens.py`` measures others)."""
    texts = list(texts)
    runs = [_CJK_RUN.findall(text) for text in texts]
    latin = [_CJK_RUN.sub(" ", text) if found else text for text, found in zip(texts, runs, strict=True)]
    words = bm25s.tokenize(latin, stopwords="en", stemmer=_STEMMER, return_ids=False, show_progress=False)
    return [w + [t for run in found for t in segment(run)] for w, found in zip(words, runs, strict=True)]


def normalize_text(text: str) -> str:
    """Lower-case word tokens joined by single spaces (the form both lexicon and matcher use)."""
    return " ".join(_PHRASE_TOKEN.findall(text.lower()))
