"""The three SFT stages of the paper as (prompt, target) pairs built from a track and its SIDs.

1. alignment      item title (and short spans of it) -> item SID, query -> query SID,
                  item SID -> category (whole catalogue)
2. co-occurrence  query -> relevant/clicked item SID, query SID -> item SID
3. personalisation the full multi-view prompt (user ID, query, query SID, recent queries, short
                  and long behaviour, profile) -> the next clicked/ordered/bought item

Only training signal is used: train-split queries and judgments, interactions on train queries, and
``valid``-split sequences (a ``test`` row's history is inference input only; evaluation.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from onesearch_ray.behavior import BehaviorIndex, UserContext, sliding_windows
from onesearch_ray.data import Event, Track
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.prompts import PromptBuilder

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

    def train_queries(self) -> list[tuple[int, str]]:
        queries = self.track.queries
        if queries is None:
            return []
        mask = pc.equal(queries.column("split"), self.train_split)
        kept = queries.filter(mask)
        return list(zip(kept.column("query_id").to_pylist(), kept.column("query").to_pylist(), strict=True))

    def codes_of(self, item_id: int) -> tuple[int, ...] | None:
        return (
            tuple(int(c) for c in self.sids.item_codes([item_id])[0]) if self.sids.has_item(item_id) else None
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
    for row, (item_id, title) in enumerate(
        zip(items.column("item_id").to_pylist(), items.column("title").to_pylist(), strict=True)
    ):
        codes = inputs.codes_of(item_id)
        if codes is None:
            continue
        pairs.append((builder.title_to_sid_prompt(title), builder.target(codes)))
        for span in title_spans(title, inputs.title_spans_per_item, seed=abs(item_id)):
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
    return pairs


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
    mask = pc.equal(sequences.column("split"), inputs.sequence_split)
    rows = sequences.filter(mask)
    for user, history, target in zip(
        *(rows.column(c).to_pylist() for c in ("user_id", "history_item_ids", "item_id")), strict=True
    ):
        for prefix, nxt in sliding_windows(list(history) + [target], window):
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
