"""Ranking metrics exactly as ``docs/evaluation.md`` defines them.

Every function takes ranked lists of item ids, best first. A ranking may hold fewer than K items
(missing slots are misses) and may repeat an item: only its first occurrence counts.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Hashable, Iterable, Mapping, Sequence

RELEVANT_THRESHOLD = 2.67  # mean human rating at or above which a judged item is relevant
SEARCH_KS = (10, 50, 350)
NEXT_ITEM_KS = (5, 10)
NDCG_K = 10


def dedup(ranked: Iterable[int]) -> list[int]:
    """The ranking with repeats removed (first occurrence kept, order preserved)."""
    return list(dict.fromkeys(ranked))


def _discount(rank: int) -> float:
    """1 / log2(rank + 1) for a 1-based rank."""
    return 1.0 / math.log2(rank + 1)


def relevant_items(relevance: Mapping[int, float], threshold: float = RELEVANT_THRESHOLD) -> set[int]:
    """Judged items whose graded relevance reaches ``threshold``."""
    return {item for item, rel in relevance.items() if rel >= threshold}


def hit_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """1.0 if any relevant item is in the top k, else 0.0 (``ranked`` already deduplicated)."""
    return float(any(item in relevant for item in ranked[:k]))


def recall_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """Relevant items in the top k over all relevant items (``ranked`` already deduplicated)."""
    if not relevant:
        return 0.0
    return sum(item in relevant for item in ranked[:k]) / len(relevant)


def reciprocal_rank_at_k(ranked: Sequence[int], relevant: Collection[int], k: int) -> float:
    """1 / rank of the first relevant item within the top k, 0.0 if none."""
    for rank, item in enumerate(ranked[:k], start=1):
        if item in relevant:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[int], relevance: Mapping[int, float], k: int = NDCG_K) -> float:
    """Graded NDCG: gain = relevance - 1 for judged items, 0 unjudged; ideal from the judged items."""
    gains = {item: rel - 1.0 for item, rel in relevance.items()}
    dcg = sum(gains.get(item, 0.0) * _discount(rank) for rank, item in enumerate(ranked[:k], start=1))
    ideal = sorted(gains.values(), reverse=True)[:k]
    idcg = sum(gain * _discount(rank) for rank, gain in enumerate(ideal, start=1))
    return dcg / idcg if idcg > 0 else 0.0


def judged_at_k(ranked: Sequence[int], relevance: Mapping[int, float], k: int = NDCG_K) -> float:
    """Share of the k slots holding a judged item (an empty slot is not judged)."""
    return sum(item in relevance for item in ranked[:k]) / k


def search_metrics(
    rankings: Mapping[Hashable, Sequence[int]],
    judgments: Mapping[Hashable, Mapping[int, float]],
    ks: Sequence[int] = SEARCH_KS,
) -> dict[str, float]:
    """Mean search metrics over the queries in ``rankings`` that have a relevant judged item.

    A query absent from ``judgments`` or without an item at ``RELEVANT_THRESHOLD`` is skipped.
    Keys: ``HR@K``, ``Recall@K``, ``MRR@K`` for each K, ``NDCG@10``, ``judged@10``, ``n_queries``
    (kept) and ``n_skipped``.
    """
    names = [f"{m}@{k}" for k in ks for m in ("HR", "Recall", "MRR")] + [f"NDCG@{NDCG_K}", f"judged@{NDCG_K}"]
    totals = dict.fromkeys(names, 0.0)
    kept = skipped = 0
    for qid, ranking in rankings.items():
        relevance = judgments.get(qid, {})
        relevant = relevant_items(relevance)
        if not relevant:
            skipped += 1
            continue
        kept += 1
        ranked = dedup(ranking)
        for k in ks:
            totals[f"HR@{k}"] += hit_at_k(ranked, relevant, k)
            totals[f"Recall@{k}"] += recall_at_k(ranked, relevant, k)
            totals[f"MRR@{k}"] += reciprocal_rank_at_k(ranked, relevant, k)
        totals[f"NDCG@{NDCG_K}"] += ndcg_at_k(ranked, relevance, NDCG_K)
        totals[f"judged@{NDCG_K}"] += judged_at_k(ranked, relevance, NDCG_K)
    out = {name: total / kept if kept else 0.0 for name, total in totals.items()}
    return out | {"n_queries": kept, "n_skipped": skipped}


def target_rank(ranking: Iterable[int], target: int) -> int | None:
    """1-based rank of ``target`` in the deduplicated ranking, None if absent."""
    for rank, item in enumerate(dedup(ranking), start=1):
        if item == target:
            return rank
    return None


def next_item_metrics(
    rankings: Sequence[Sequence[int]], targets: Sequence[int], ks: Sequence[int] = NEXT_ITEM_KS
) -> dict[str, float]:
    """Single-target HR@K and NDCG@K (= 1/log2(rank+1) within K) averaged over rows, plus ``n_rows``."""
    if len(rankings) != len(targets):
        raise ValueError(f"{len(rankings)} rankings but {len(targets)} targets")
    totals = {f"{m}@{k}": 0.0 for k in ks for m in ("HR", "NDCG")}
    for ranking, target in zip(rankings, targets, strict=True):
        rank = target_rank(ranking, target)
        for k in ks:
            if rank is not None and rank <= k:
                totals[f"HR@{k}"] += 1.0
                totals[f"NDCG@{k}"] += _discount(rank)
    n = len(targets)
    return {name: total / n if n else 0.0 for name, total in totals.items()} | {"n_rows": n}
