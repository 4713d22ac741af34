"""Evaluation metrics against hand-computed cases (docs/evaluation.md definitions)."""

from __future__ import annotations

import math

import pytest

from onesearch_ray.metrics import ndcg_at_k, next_item_metrics, search_metrics

# q1: relevant = {10 (3.0), 11 (2.67: exactly the threshold)}; 12 (2.0) and 13 (1.0) judged, not relevant.
# Its ranking repeats 12 and holds an unjudged 99: deduplicated it is [12, 99, 10, 11, 13].
JUDGMENTS = {
    "q1": {10: 3.0, 11: 2.67, 12: 2.0, 13: 1.0},
    "q2": {20: 2.66},  # judged but nothing relevant: skipped
    "q4": {30: 3.0},
}
RANKINGS = {
    "q1": [12, 99, 10, 12, 11, 13],
    "q2": [20],
    "q3": [1, 2],  # no judgments at all: skipped
    "q4": [],  # a system that returned nothing: kept, scores 0
}
# q1 NDCG@10 by hand: gains 12 -> 1, 99 -> 0, 10 -> 2, 11 -> 1.67, 13 -> 0 at ranks 1..5;
# DCG = 1/1 + 0 + 2/log2(4) + 1.67/log2(5) + 0 = 2.71923; ideal order 2, 1.67, 1, 0:
# IDCG = 2/1 + 1.67/log2(3) + 1/log2(4) + 0 = 3.55365; NDCG = 0.76519.
Q1_NDCG = (1 + 2 / 2 + 1.67 / math.log2(5)) / (2 + 1.67 / math.log2(3) + 1 / 2)


def test_q1_ndcg_hand_value() -> None:
    assert Q1_NDCG == pytest.approx(0.76519, abs=1e-5)
    assert ndcg_at_k([12, 99, 10, 11, 13], JUDGMENTS["q1"]) == pytest.approx(Q1_NDCG)


def test_search_metrics_hand_case() -> None:
    m = search_metrics(RANKINGS, JUDGMENTS, ks=(2, 4))
    assert m["n_queries"] == 2 and m["n_skipped"] == 2
    # q1 top 2 = [12, 99]: nothing relevant; q4: nothing at all.
    assert m["HR@2"] == 0.0 and m["Recall@2"] == 0.0 and m["MRR@2"] == 0.0
    # q1 top 4 = [12, 99, 10, 11]: hit, both relevant found, first relevant at rank 3 (the repeated 12
    # does not push 11 out of the top 4); q4 scores 0. Means over the 2 kept queries:
    assert m["HR@4"] == pytest.approx(0.5)
    assert m["Recall@4"] == pytest.approx(0.5)
    assert m["MRR@4"] == pytest.approx((1 / 3) / 2)
    assert m["NDCG@10"] == pytest.approx(Q1_NDCG / 2)
    # q1: 4 judged items (12, 10, 11, 13) in 10 slots; q4: 0.
    assert m["judged@10"] == pytest.approx((4 / 10) / 2)


def test_search_metrics_keys_and_recall_fraction() -> None:
    judgments = {1: {1: 3.0, 2: 3.0, 3: 3.0, 4: 3.0}}
    ranking = [9] * 5 + [1] + list(range(100, 143)) + [2, 3]  # deduplicated: 1 at rank 2, 2 at 46, 3 at 47
    m = search_metrics({1: ranking}, judgments)
    assert list(m) == [
        "HR@10", "Recall@10", "MRR@10", "HR@50", "Recall@50", "MRR@50",
        "HR@350", "Recall@350", "MRR@350", "NDCG@10", "judged@10", "n_queries", "n_skipped",
    ]  # fmt: skip
    assert m["Recall@10"] == pytest.approx(1 / 4)
    assert m["Recall@50"] == pytest.approx(3 / 4)
    assert m["MRR@10"] == pytest.approx(1 / 2)
    # Gain 2 at rank 2 over the ideal 2, 2, 2, 2 at ranks 1..4.
    ideal = 2 * (1 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5))
    assert m["NDCG@10"] == pytest.approx(2 / math.log2(3) / ideal)
    assert m["judged@10"] == pytest.approx(1 / 10)


def test_ndcg_ideal_uses_all_judged_items_not_only_retrieved() -> None:
    # Only the weaker relevant item is retrieved, at rank 1: DCG = 1.0, IDCG = 2/1 + 1/log2(3).
    relevance = {1: 3.0, 2: 2.0}
    assert ndcg_at_k([2], relevance) == pytest.approx(1.0 / (2 + 1 / math.log2(3)))
    assert ndcg_at_k([1, 2], relevance) == pytest.approx(1.0)
    assert ndcg_at_k([7, 8], relevance) == 0.0


def test_search_metrics_no_kept_queries() -> None:
    m = search_metrics({"a": [1]}, {"a": {1: 1.0}}, ks=(10,))
    assert m["n_queries"] == 0 and m["n_skipped"] == 1 and m["HR@10"] == 0.0


def test_next_item_metrics_hand_case() -> None:
    rankings = [
        [5, 1, 2],  # target 1 at rank 2
        [3, 3, 3, 3, 3, 4, 6, 7, 8, 9, 10, 11],  # 3 repeated: deduplicated target 10 is at rank 7
        [1, 2],  # target 9 missing
    ]
    m = next_item_metrics(rankings, [1, 10, 9], ks=(1, 5, 10))
    assert m["n_rows"] == 3
    assert m["HR@1"] == 0.0 and m["NDCG@1"] == 0.0
    assert m["HR@5"] == pytest.approx(1 / 3)
    assert m["NDCG@5"] == pytest.approx((1 / math.log2(3)) / 3)
    assert m["HR@10"] == pytest.approx(2 / 3)
    assert m["NDCG@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(8)) / 3)  # = (0.6309 + 1/3)/3


def test_next_item_metrics_default_keys_and_length_check() -> None:
    assert list(next_item_metrics([[1]], [1])) == ["HR@5", "NDCG@5", "HR@10", "NDCG@10", "n_rows"]
    assert next_item_metrics([[1]], [1])["NDCG@5"] == 1.0
    with pytest.raises(ValueError):
        next_item_metrics([[1]], [1, 2])
