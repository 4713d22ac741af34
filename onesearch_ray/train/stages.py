"""The three SFT stages of the paper as (prompt, target) pairs built from a track and its SIDs.

1. alignment      item title (and short spans of it) -> item SID, query -> query SID,
                  item SID -> category (whole catalogue)
2. co-occurrence  query -> relevant/clicked item SID, query SID -> item SID
3. personalisation the full multi-view prompt (user ID, query, query SID, recent queries, short
                  and long behaviour, profile) -> the next clicked/ordered/bought item

Only training signal is used: train-split queries and judgments, interactions on train queries, and
``valid``-split sequences (a ``test`` row's history is inference input only; evaluation.md).
No text of a ``valid`` or ``test`` query enters any pair: title spans that happen to equal one are
dropped, and :func:`check_no_leak` (run by the training driver on every stage) fails loudly if one
gets through. Co-occurrence may also carry cascade-distilled pairs (``onesearch_ray.train.distill``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

from onesearch_ray.behavior import BehaviorIndex, UserContext, sliding_windows
from onesearch_ray.data import Event, Track
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.khqe.keywords import normalize_text
from onesearch_ray.prompts import PromptBuilder
from onesearch_ray.prompts.builder import NONE
from onesearch_ray.prompts.tokenizer import (
    ANSWER,
    LONG,
    PROFILE,
    QSID,
    QUERY,
    QUERY2SID,
    RECENT_ITEMS,
    RECENT_QUERIES,
    SEP,
    TITLE2SID,
)

RELEVANT = 2.67  # evaluation.md: relevance >= 2.67 is relevant
STAGES = ("alignment", "cooccurrence", "personalization")
Pairs = list[tuple[str, str]]


@dataclass
class StageInputs:
    """Everything the stage builders read: the track, its SIDs and the query SIDs."""

    track: Track
    sids: SemanticIdTokenizer
    query_codes: dict[int, tuple[int, ...]]
    builder: PromptBuilder
    behavior: BehaviorIndex | None = None
    title_spans_per_item: int = 0
    train_split: str = "train"
    sequence_split: str = "valid"
    # sequence rows (positions in track.sequences) kept for checkpoint selection: their target
    # never trains, their history still does (train.selection)
    selection_rows: frozenset[int] = frozenset()
    distilled: Pairs = field(default_factory=list)  # cascade-distilled pairs, added to co-occurrence
    human_repeats: int = 1  # each human-labelled co-occurrence pair counts this often (beside distilled)

    def train_queries(self) -> list[tuple[int, str]]:
        queries = self.track.queries
        if queries is None:
            return []
        mask = pc.equal(queries.column("split"), self.train_split)
        kept = queries.filter(mask)
        return list(zip(kept.column("query_id").to_pylist(), kept.column("query").to_pylist(), strict=True))

    def held_out_query_keys(self) -> set[str]:
        """:func:`query_key` of every valid/test query whose text is not also a train query's."""
        return held_out_query_keys(self.track, self.train_split)

    def codes_of(self, item_id: int) -> tuple[int, ...] | None:
        return (
            tuple(int(c) for c in self.sids.item_codes([item_id])[0]) if self.sids.has_item(item_id) else None
        )


def query_key(text: str | None) -> str:
    """The form query texts are compared in for the no-leak rule: lower-case word tokens."""
    return normalize_text(text or "")


def held_out_query_keys(track: Track, train_split: str = "train") -> set[str]:
    """Keys of the queries training must never see (valid and test). A text that is also a train
    query's is training data by the split itself, so it is not held out."""
    if track.queries is None:
        return set()
    texts, splits = track.queries.column("query").to_pylist(), track.queries.column("split").to_pylist()
    train = {query_key(t) for t, s in zip(texts, splits, strict=True) if s == train_split}
    return {k for t, s in zip(texts, splits, strict=True) if s != train_split and (k := query_key(t))} - train


# every free-text slot of a prompt that holds a query or a pseudo-query
_QUERY_SLOTS = (
    re.compile(re.escape(QUERY) + "(.*?) " + re.escape(QSID)),
    # recent queries run up to the next section (sections can be switched off)
    re.compile(
        re.escape(RECENT_QUERIES)
        + "(.*?) (?:"
        + "|".join(map(re.escape, (RECENT_ITEMS, LONG, PROFILE, ANSWER)))
        + ")"
    ),
    re.compile("^" + re.escape(QUERY2SID) + "(.*) " + re.escape(ANSWER) + "$"),
    re.compile("^" + re.escape(TITLE2SID) + "(.*) " + re.escape(ANSWER) + "$"),
)


def prompt_queries(prompt: str) -> list[str]:
    """The query texts a prompt carries: its query, its recent queries, a query2sid/title2sid text."""
    found = []
    for pattern in _QUERY_SLOTS:
        for match in pattern.finditer(prompt):
            found.extend(part.strip() for part in match.group(1).split(SEP))
    return [text for text in found if text and f" {text}" != NONE]


class LeakError(ValueError):
    """A valid or test query's text reached a training pair."""


def check_no_leak(
    stage: str, pairs: Iterable[tuple[str, str]], held_out: Collection[str], allowed: Collection[str] = ()
) -> None:
    """Raise :class:`LeakError` if any prompt's query slot (:func:`prompt_queries`) equals a held-out
    query key. ``allowed`` keys pass anyway: an item's whole title is catalogue text that every
    stage may read even when a test query copies it word for word."""
    if not held_out:
        return
    for prompt, _ in pairs:
        for text in prompt_queries(prompt):
            key = query_key(text)
            if key in held_out and key not in allowed:
                raise LeakError(
                    f"{stage}: training prompt carries the text of a valid/test query {text!r} "
                    f"(evaluation.md: no valid or test query text enters training): {prompt[:200]!r}"
                )


def title_spans(title: str, count: int, seed: int, lengths: tuple[int, int] = (2, 4)) -> list[str]:
    """``count`` short contiguous word spans of a title, reproducible from ``seed``: stand-ins for
    the short queries that find the item (search queries are mostly title fragments)."""
    words = title.split()
    if len(words) <= lengths[0]:
        return []
    rng = np.random.default_rng(seed)
    spans = []
    for _ in range(count):
        length = int(rng.integers(lengths[0], min(lengths[1], len(words) - 1) + 1))
        start = int(rng.integers(0, len(words) - length + 1))
        spans.append(" ".join(words[start : start + length]))
    return spans


def alignment_pairs(inputs: StageInputs) -> Pairs:
    items = inputs.track.items
    builder, pairs = inputs.builder, []
    categories = items.column("category").to_pylist() if "category" in items.column_names else None
    held_out = inputs.held_out_query_keys()
    for row, (item_id, title) in enumerate(
        zip(items.column("item_id").to_pylist(), items.column("title").to_pylist(), strict=True)
    ):
        codes = inputs.codes_of(item_id)
        if codes is None:
            continue
        pairs.append((builder.title_to_sid_prompt(title), builder.target(codes)))
        for span in title_spans(title, inputs.title_spans_per_item, seed=abs(item_id)):
            if query_key(span) in held_out:  # a span that happens to be a valid/test query's text
                continue
            pairs.append((builder.title_to_sid_prompt(span), builder.target(codes)))
        if categories and categories[row]:
            pairs.append((builder.sid_to_category_prompt(codes), f" {categories[row]}{builder.eos}"))
    for query_id, query in inputs.train_queries():
        if query_id in inputs.query_codes:
            pairs.append((builder.query_to_sid_prompt(query), builder.target(inputs.query_codes[query_id])))
    return pairs


def positive_items_by_query(inputs: StageInputs) -> dict[int, list[int]]:
    """Train queries -> items that answer them: relevant judgments, then clicked/ordered items."""
    positives: dict[int, list[int]] = {}
    train_ids = {qid for qid, _ in inputs.train_queries()}
    judgments = inputs.track.judgments
    if judgments is not None:
        for qid, item, rel in zip(
            *(judgments.column(c).to_pylist() for c in ("query_id", "item_id", "relevance")), strict=True
        ):
            if qid in train_ids and rel >= RELEVANT:
                positives.setdefault(qid, []).append(item)
    interactions = inputs.track.interactions
    if interactions is not None:
        for qid, item, event in zip(
            *(interactions.column(c).to_pylist() for c in ("query_id", "item_id", "event")), strict=True
        ):
            if qid in train_ids and event >= Event.CLICKED and item not in positives.get(qid, ()):
                positives.setdefault(qid, []).append(item)
    return positives


def cooccurrence_pairs(inputs: StageInputs) -> Pairs:
    """Human-labelled train queries -> their items (each ``human_repeats`` times), then the
    cascade-distilled pairs, if any."""
    builder, pairs = inputs.builder, []
    queries = dict(inputs.train_queries())
    for qid, items in positive_items_by_query(inputs).items():
        query_codes = inputs.query_codes.get(qid)
        for item in items:
            codes = inputs.codes_of(item)
            if codes is None:
                continue
            pairs.append((builder.search_prompt(queries[qid], query_codes, None), builder.target(codes)))
            if query_codes is not None:
                pairs.append((builder.qsid_to_sid_prompt(query_codes), builder.target(codes)))
    return pairs * inputs.human_repeats + inputs.distilled if inputs.distilled else pairs


def personalization_pairs(inputs: StageInputs, window: int = 5) -> Pairs:
    """Full prompts: search log events (with the user's context at that time) or sequence windows."""
    track, builder = inputs.track, inputs.builder
    if track.interactions is not None and inputs.behavior is not None:
        return _search_log_pairs(inputs)
    if track.sequences is not None:
        return _sequence_pairs(inputs, window)
    # search-only tracks (no users): every prompt carries the cold-start behaviour context
    queries = dict(inputs.train_queries())
    pairs = []
    for qid, items in positive_items_by_query(inputs).items():
        context = inputs.behavior.cold_start_context(qid) if inputs.behavior else None
        for item in items:
            codes = inputs.codes_of(item)
            if codes is not None:
                prompt = builder.search_prompt(queries[qid], inputs.query_codes.get(qid), context)
                pairs.append((prompt, builder.target(codes)))
    return pairs


def _search_log_pairs(inputs: StageInputs) -> Pairs:
    interactions, builder, pairs = inputs.track.interactions, inputs.builder, []
    queries = dict(inputs.train_queries())
    columns = ("user_id", "query_id", "item_id", "event", "timestamp", "session_id")
    for user, qid, item, event, ts, session in zip(
        *(interactions.column(c).to_pylist() for c in columns), strict=True
    ):
        if event < Event.CLICKED or qid not in queries:
            continue
        codes = inputs.codes_of(item)
        if codes is None:
            continue
        # the user's state when the query was typed: earlier events only, this session's query excluded
        context = inputs.behavior.context_for(
            user, before_timestamp=ts, query_id=qid, exclude_session=session
        )
        prompt = builder.search_prompt(queries[qid], inputs.query_codes.get(qid), context)
        pairs.extend([(prompt, builder.target(codes))] * (2 if event == Event.ORDERED else 1))
    return pairs


def _sequence_pairs(inputs: StageInputs, window: int) -> Pairs:
    sequences, builder, pairs = inputs.track.sequences, inputs.builder, []
    split = sequences.column("split").to_pylist()
    columns = (sequences.column(c).to_pylist() for c in ("user_id", "history_item_ids", "item_id"))
    for row, (user, history, target) in enumerate(zip(*columns, strict=True)):
        if split[row] != inputs.sequence_split:
            continue
        # a row kept for checkpoint selection trains on its history only, never on its target
        sequence = list(history) if row in inputs.selection_rows else [*history, target]
        for prefix, nxt in sliding_windows(sequence, window):
            codes = inputs.codes_of(nxt)
            if codes is None:
                continue
            context = UserContext(
                user_id=user, recent_queries=[], short_items=prefix, long_items=prefix, profile=None
            )
            pairs.append((builder.search_prompt(None, None, context), builder.target(codes)))
    return pairs


STAGE_BUILDERS: dict[str, Callable[[StageInputs], Pairs]] = {
    "alignment": alignment_pairs,
    "cooccurrence": cooccurrence_pairs,
    "personalization": personalization_pairs,
}
