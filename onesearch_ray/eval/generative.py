"""Rankings from the generative model: prompts -> constrained beam search -> SIDs -> items.

The same prompt builder as training builds the prompts; the engine is any ``DecodingEngine``
(the transformers reference here, vLLM in serving). SIDs expand into items in beam order, a
shared SID yielding all its items in the tokenizer's documented tie-break order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from onesearch_ray.behavior import BehaviorIndex, UserContext
from onesearch_ray.decoding.beam import DecodingEngine, SidHit, hits_to_items
from onesearch_ray.khqe import SemanticIdTokenizer
from onesearch_ray.prompts import PromptBuilder

log = logging.getLogger(__name__)


@dataclass
class GenerativeRankings:
    rankings: list[list[int]]
    hits: list[list[SidHit]]

    def valid_sid_rate(self, sids: SemanticIdTokenizer) -> float:
        generated = [hit.codes for hits in self.hits for hit in hits]
        return sum(bool(sids.items_for_sid(c)) for c in generated) / max(1, len(generated))


def rank_prompts(
    engine: DecodingEngine,
    prompts: Sequence[str],
    sids: SemanticIdTokenizer,
    beam: int,
    k: int,
    batch_size: int = 8,
    progress: bool = True,
) -> GenerativeRankings:
    rankings, all_hits = [], []
    for start in tqdm(
        range(0, len(prompts), batch_size), disable=not progress, desc="beam search", unit="batch"
    ):
        for hits in engine.search(prompts[start : start + batch_size], beam):
            all_hits.append(hits)
            rankings.append(hits_to_items(hits, sids.items_for_sid, k))
    return GenerativeRankings(rankings, all_hits)


def search_prompts(
    builder: PromptBuilder,
    queries: Sequence[tuple[int, str]],
    query_codes: dict[int, tuple[int, ...]],
    behavior: BehaviorIndex | None,
) -> list[str]:
    """Search-track prompts: the query, its SID, and a cold-start behaviour context (no user known)."""
    return [
        builder.search_prompt(
            text, query_codes.get(qid), behavior.cold_start_context(qid) if behavior else None
        )
        for qid, text in queries
    ]


def next_item_prompts(
    builder: PromptBuilder, user_ids: Sequence[str], histories: Sequence[Sequence[int]]
) -> list[str]:
    """Personalisation-track prompts: no query; the history is both the short and the long view."""
    return [
        builder.search_prompt(
            None,
            None,
            UserContext(user_id=u, recent_queries=[], short_items=list(h), long_items=list(h), profile=None),
        )
        for u, h in zip(user_ids, histories, strict=True)
    ]
