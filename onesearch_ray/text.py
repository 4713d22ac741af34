"""The words of a text: one tokenizer for everything that reads words (English).

- ``tokenize``: BM25's tokens (bm25s: lower case, words of 2+ characters, English stopwords out,
  Snowball stemmer). The catalogue's lexical index, hence the generator's lexical term, its prompt's
  hashed words and the BM25 baseline, all read these, so the model and its baseline never part.
- ``normalize_text``: the keyphrase form KHQE's lexicon is built and matched in (lower case, word
  tokens kept whole and unstemmed: "1/2 in." stays "1/2 in", brands keep their stopwords inside).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import bm25s
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

MAX_QUERY_CHARS = 512  # a query is cut here (the API refuses longer ones; prompts cut before tokenising)
STOPWORDS = frozenset(STOPWORDS_EN)

_STEMMER = Stemmer.Stemmer("english")
_PHRASE_TOKEN = re.compile(r"[a-z0-9]+(?:[.\-/][a-z0-9]+)*")


def tokenize(texts: Sequence[str]) -> list[list[str]]:
    """BM25's tokens of each text: lower-cased words of 2+ characters, stopwords removed, stemmed."""
    return bm25s.tokenize(
        list(texts), stopwords="en", stemmer=_STEMMER, return_ids=False, show_progress=False
    )


def normalize_text(text: str) -> str:
    """Lower-case word tokens joined by single spaces (the form both lexicon and matcher use)."""
    return " ".join(_PHRASE_TOKEN.findall(text.lower()))
