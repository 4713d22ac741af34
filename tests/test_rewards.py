"""PARS rewards: calibrated CTR/CVR, relevance and the composite item reward (no Ray)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from onesearch_ray.data import SyntheticConfig, generate_synthetic
from onesearch_ray.data.schemas import INTERACTION_SCHEMA, JUDGMENT_SCHEMA, Event
from onesearch_ray.rewards import (
    RelevanceOracle,
    RewardConfig,
    calibrated_rates,
    composite_item_reward,
    interaction_counts,
    load_reward_config,
    lookup_counts,
    relevance_tier,
)

REPO = Path(__file__).resolve().parents[1]
SHOWN, CLICK, ORDER = int(Event.SHOWN), int(Event.CLICKED), int(Event.ORDERED)


@pytest.fixture(scope="module")
def world():
    return generate_synthetic(SyntheticConfig(n_items=400, n_users=50, n_queries=80, n_sessions=400))


def _log(rows: list[tuple[str, int | None, int, int, int]]) -> pa.Table:
    """(user, query, item, event, session) rows -> an interactions table."""
    users, queries, items, events, sessions = (list(c) for c in zip(*rows, strict=True))
    return pa.Table.from_pydict(
        {
            "user_id": users,
            "query_id": queries,
            "item_id": items,
            "event": events,
            "timestamp": list(range(len(rows))),
            "session_id": sessions,
        },
        schema=INTERACTION_SCHEMA,
    )


# --- calibrated CTR/CVR ---------------------------------------------------------------------------


def test_calibrated_rates_match_hand_computation():
    # pos 90, clk 10, ord 0: T = log(100 * 20 * 10) = 9.903488; ctr = log 20 / T; cvr = log 10 / log 20.
    rates = calibrated_rates(90, 10, 0, lam=1.0)
    assert rates.ctr == pytest.approx(2.995732 / 9.903488, abs=1e-6)
    assert rates.cvr == pytest.approx(2.302585 / 2.995732, abs=1e-6)
    ctr, cvr = 0.3024924, 0.7686218
    assert rates.reward == pytest.approx(2 * ctr * cvr / (ctr + cvr), abs=1e-6)
    assert rates.reward == pytest.approx(0.434134, abs=1e-5)
    assert calibrated_rates(90, 10, 0, lam=2.0).reward == pytest.approx(2 * 0.434134, abs=1e-5)


def test_new_items_do_not_get_full_ctr():
    rates = calibrated_rates([0, 1, 100, 100_000], [0, 1, 50, 100], [0, 1, 10, 0])
    # Never shown: ctr 1/3, cvr 1, r = 2 * (1/3) * 1 / (4/3) = 1/2 -- far from a raw 100% CTR.
    assert rates.ctr[0] == pytest.approx(1 / 3) and rates.cvr[0] == pytest.approx(1.0)
    assert rates.reward[0] == pytest.approx(0.5)
    # One impression, one click (raw CTR 100%) stays near the prior; proven clickers rank above it,
    # an item shown 100k times with 100 clicks below it.
    assert rates.ctr[1] < 0.35
    assert rates.ctr[2] > rates.ctr[1] > rates.ctr[3]
    assert np.all((rates.ctr > 0) & (rates.ctr < 1))


def test_calibrated_rates_reject_negative_counts():
    with pytest.raises(ValueError, match="clicks"):
        calibrated_rates([1, 2], [0, -1], [0, 0])


def test_interaction_counts_per_item_and_per_query_item():
    log = _log(
        [
            ("u1", 7, 1, SHOWN, 0),
            ("u1", 7, 2, SHOWN, 0),
            ("u1", 7, 1, CLICK, 0),
            ("u1", 7, 1, ORDER, 0),
            ("u2", 8, 1, SHOWN, 1),
            ("u2", None, 2, CLICK, 2),
        ]
    )
    per_item = interaction_counts(log).sort_by("item_id").to_pydict()
    assert per_item == {"item_id": [1, 2], "impressions": [2, 1], "clicks": [1, 1], "orders": [1, 0]}
    per_pair = interaction_counts(log, ["query_id", "item_id"])
    keys = pa.table({"query_id": [8, 7, 9], "item_id": [1, 1, 1]})
    impressions, clicks, orders = lookup_counts(per_pair, keys)
    np.testing.assert_array_equal(impressions, [1, 1, 0])  # in the order asked; unseen pair -> 0
    np.testing.assert_array_equal(clicks, [0, 1, 0])
    np.testing.assert_array_equal(orders, [0, 1, 0])


# --- relevance ------------------------------------------------------------------------------------


def test_relevance_tiers_of_hand_picked_grades():
    grades = [1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 8 / 3, 3.0]
    np.testing.assert_array_equal(relevance_tier(grades), [0, 1, 1, 2, 2, 3, 3])
    with pytest.raises(ValueError, match="grades"):
        relevance_tier([0.5])


def test_relevance_from_judgments_then_intents_then_default(world):
    judgments = world.judgments
    oracle = RelevanceOracle.from_track(world)
    queries, items = judgments["query_id"].to_numpy(), judgments["item_id"].to_numpy()
    np.testing.assert_array_equal(oracle.grades(queries, items), judgments["relevance"].to_numpy())
    # The intents alone reproduce every judgment the generator wrote ...
    by_intent = RelevanceOracle(items=world.items, intents=world.extras["query_intent"])
    np.testing.assert_array_equal(by_intent.grades(queries, items), judgments["relevance"].to_numpy())
    # ... and grade the unjudged pairs too: all items of query 1's category are 2 or 3, the rest 1.
    intent = world.extras["query_intent"][1]
    all_items = world.items["item_id"].to_numpy()
    grades = oracle.grades(np.ones_like(all_items), all_items)
    in_category = np.asarray(world.items["category"].to_pylist()) == intent["category"]
    assert np.all(grades[in_category] >= 2) and np.all(grades[~in_category] == 1)
    assert (grades == 3).any()
    # Judgments only (a track without its intents, e.g. Home Depot): unjudged pairs get the default.
    judged_only = RelevanceOracle(
        pa.table({"query_id": [1], "item_id": [5], "relevance": [8 / 3]}, schema=JUDGMENT_SCHEMA),
        unjudged=1.0,
    )
    np.testing.assert_allclose(judged_only.grades([1, 1, 2], [5, 6, 5]), [8 / 3, 1.0, 1.0])
    np.testing.assert_array_equal(judged_only.tiers([1, 1], [5, 6]), [3, 0])


# --- combined rewards and config ------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_parses(path):
    from onesearch_ray.generator.config import load_job_config
    from onesearch_ray.khqe.config import load_khqe_config

    load_khqe_config(path)
    load_job_config(path)
    load_reward_config(path)


def test_reward_config_from_yaml(tmp_path):
    assert load_reward_config(REPO / "configs" / "default.yaml") == RewardConfig()
    path = tmp_path / "c.yaml"
    path.write_text("rewards:\n  tier_weight: 5.0\n  ordered_score: 6\n")
    config = load_reward_config(path)
    assert config.tier_weight == 5.0 and config.ordered_score == 6.0
    path.write_text("rewards:\n  tier_wieght: 5.0\n")
    with pytest.raises(ValueError, match="unknown key 'tier_wieght'"):
        load_reward_config(path)
    with pytest.raises(ValueError, match="ordered_score >= clicked_score"):
        RewardConfig(ordered_score=1.0, clicked_score=2.0)
    with pytest.raises(ValueError, match="tier_weight must be >= 0"):
        RewardConfig(tier_weight=-1.0)
    path.write_text("train:\n  model: {size: tiny}\n")  # the retired text-token model's section
    with pytest.raises(ValueError, match="unknown section"):
        load_reward_config(path)


def test_composite_item_reward_of_v2():
    config = RewardConfig()
    rewards = composite_item_reward(
        ordered=[True, False, False],
        clicked=[True, True, False],
        ctr=[0.4, 1.7, -0.2],
        tier=[3, 2, 0],
        config=config,
    )
    # 4 + 0.4 + 3; 3 + 1 (ctr clipped) + 2; 0 + 0 (clipped) + 0.
    np.testing.assert_allclose(rewards, [7.4, 6.0, 0.0])
