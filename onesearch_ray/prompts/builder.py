"""Prompt builder: plain strings of text, markers and SID tokens; every prompt ends with ``<|answer|>``.

Search prompt (sections can be switched off in :class:`PromptConfig` for ablations; an empty
section reads `` none``)::

    <|search|><|query|> {query} <|qsid|>{query SID} <|user|>{short ID}{long ID}
    <|recent_queries|> q1 <|sep|> q2 <|recent_items|>{SID}{SID} <|long|>{codes}
    <|profile|> {profile} <|answer|>

(one line in reality). The target is the item's SID tokens then ``<|eos|>``. User text is cleaned
(marker- and SID-shaped substrings removed, whitespace collapsed) and cut to a character budget, so a
prompt stays bounded and a user cannot inject markers.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onesearch_ray.behavior.views import UserContext, behavior_user_sid, long_term_view
from onesearch_ray.khqe.sid_tokenizer import SemanticIdTokenizer
from onesearch_ray.prompts.tokenizer import (
    ANSWER,
    EOS,
    LONG,
    MARKUP_PATTERN,
    PROFILE,
    QSID,
    QSID2SID,
    QUERY,
    QUERY2SID,
    RECENT_ITEMS,
    RECENT_QUERIES,
    SEARCH,
    SEP,
    SID2CATEGORY,
    TITLE2SID,
    USER,
)

NONE = " none"
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class PromptConfig:
    """What goes into a search prompt and the character budgets of free text."""

    max_recent_queries: int = 3
    max_short_items: int = 5
    long_per_level: tuple[int, ...] = (4, 4)
    max_long_items: int = 1000
    include_user_id: bool = True  # the behaviour-built user ID (short + long), never a hashed id
    include_recent_queries: bool = True
    include_short_items: bool = True
    include_long_view: bool = True
    include_profile: bool = True
    max_query_chars: int = 200
    max_title_chars: int = 200
    max_recent_query_chars: int = 100
    max_profile_chars: int = 200


def clean_text(text: str | None, budget: int) -> str:
    """Drop marker/SID-shaped substrings, collapse whitespace, cut to ``budget`` characters."""
    if not text:
        return ""
    text = _SPACES.sub(" ", MARKUP_PATTERN.sub(" ", str(text))).strip()
    return text[:budget].rstrip()


class PromptBuilder:
    """Turns queries, items and :class:`UserContext` into prompt strings for the SID tokenizer."""

    def __init__(self, sid_tokenizer: SemanticIdTokenizer, config: PromptConfig | None = None) -> None:
        self.sid = sid_tokenizer
        self.config = config or PromptConfig()
        self.level_sizes = tuple(sid_tokenizer.layout.level_sizes)
        self._position_tokens = [sid_tokenizer.position_tokens(p) for p in range(len(self.level_sizes))]

    @property
    def eos(self) -> str:
        """The string that ends every target."""
        return EOS

    # ---- personalised search -------------------------------------------------------------
    def search_prompt(
        self,
        query: str | None,
        query_codes: Sequence[int] | np.ndarray | None,
        context: UserContext | None,
    ) -> str:
        """Full personalised prompt; a None/empty query (recommendation) and no context are allowed."""
        cfg = self.config
        context = context or UserContext(None, known=False)
        parts = [SEARCH, QUERY, self._text(query, cfg.max_query_chars)]
        parts += [" ", QSID, self._sid_or_none(query_codes)]
        short_codes = self._codes(context.short_items, cfg.max_short_items)
        long_codes = self._codes(context.long_items, cfg.max_long_items)
        if cfg.include_user_id:
            parts += [" ", USER, self._user_id(short_codes, long_codes)]
        if cfg.include_recent_queries:
            parts += [" ", RECENT_QUERIES, self._recent_queries(context.recent_queries)]
        if cfg.include_short_items:
            parts += [" ", RECENT_ITEMS, "".join(self.sid.sid_string(c) for c in short_codes) or NONE]
        if cfg.include_long_view:
            parts += [" ", LONG, self._long_view(long_codes)]
        if cfg.include_profile:
            parts += [" ", PROFILE, self._text(context.profile, cfg.max_profile_chars)]
        return "".join([*parts, " ", ANSWER])

    # ---- SFT alignment tasks -------------------------------------------------------------
    def title_to_sid_prompt(self, title: str) -> str:
        return f"{TITLE2SID}{self._text(title, self.config.max_title_chars)} {ANSWER}"

    def query_to_sid_prompt(self, query: str) -> str:
        return f"{QUERY2SID}{self._text(query, self.config.max_query_chars)} {ANSWER}"

    def sid_to_category_prompt(self, codes: Sequence[int] | np.ndarray) -> str:
        return f"{SID2CATEGORY}{self.sid.sid_string(_ints(codes))} {ANSWER}"

    def qsid_to_sid_prompt(self, query_codes: Sequence[int] | np.ndarray) -> str:
        return f"{QSID2SID}{self.sid.sid_string(_ints(query_codes))} {ANSWER}"

    # ---- targets -------------------------------------------------------------------------
    def target(self, codes: Sequence[int] | np.ndarray) -> str:
        """What the model must generate after ``<|answer|>``: the SID tokens, then eos."""
        return self.sid.sid_string(_ints(codes)) + EOS

    def text_target(self, text: str) -> str:
        """A text answer (e.g. the category for ``sid_to_category_prompt``), then eos."""
        return self._text(text, self.config.max_title_chars) + EOS

    # ---- pieces --------------------------------------------------------------------------
    def _text(self, text: str | None, budget: int) -> str:
        cleaned = clean_text(text, budget)
        return f" {cleaned}" if cleaned else NONE

    def _sid_or_none(self, codes: Sequence[int] | np.ndarray | None) -> str:
        return NONE if codes is None or len(codes) == 0 else self.sid.sid_string(_ints(codes))

    def _codes(self, items: Sequence[int], limit: int) -> np.ndarray:
        """Codes of the last ``limit`` items that have a SID (others skipped), oldest first."""
        known = [int(i) for i in items if self.sid.has_item(int(i))][-limit:] if limit > 0 else []
        if not known:
            return np.zeros((0, len(self.level_sizes)), np.int64)
        return np.asarray(self.sid.item_codes(known), np.int64)

    def _user_id(self, short_codes: np.ndarray, long_codes: np.ndarray) -> str:
        """Short ID + long ID (2 x SID length tokens); a missing half repeats the other one."""
        short = behavior_user_sid(short_codes, self.level_sizes)
        long = behavior_user_sid(long_codes, self.level_sizes)
        short, long = (short if short is not None else long), (long if long is not None else short)
        if short is None or long is None:
            return NONE
        return self.sid.sid_string(short.tolist()) + self.sid.sid_string(long.tolist())

    def _recent_queries(self, queries: Sequence[str]) -> str:
        cleaned = [clean_text(q, self.config.max_recent_query_chars) for q in queries]
        limit = self.config.max_recent_queries
        kept = [q for q in cleaned if q][-limit:] if limit > 0 else []
        return " " + f" {SEP} ".join(kept) if kept else NONE

    def _long_view(self, long_codes: np.ndarray) -> str:
        view = long_term_view(long_codes, self.level_sizes, self.config.long_per_level)
        return "".join(self._position_tokens[p][c] for p, c in view) or NONE


def _ints(codes: Sequence[int] | np.ndarray) -> list[int]:
    return [int(c) for c in np.asarray(codes).reshape(-1).tolist()]
