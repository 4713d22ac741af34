"""PARS rewards (``docs/onesearch.md`` section 3) as TPMA-GRPO uses them: calibrated CTR/CVR, relevance
and the composite item reward; the live feedback log DPO learns from. Pure numpy + pyarrow (no Ray,
no torch)."""

from onesearch_ray.rewards.calibration import (
    CalibratedRates,
    calibrated_rates,
    interaction_counts,
    lookup_counts,
)
from onesearch_ray.rewards.combined import RewardConfig, composite_item_reward, load_reward_config
from onesearch_ray.rewards.relevance import RelevanceOracle, relevance_tier

__all__ = [
    "CalibratedRates",
    "RelevanceOracle",
    "RewardConfig",
    "calibrated_rates",
    "composite_item_reward",
    "interaction_counts",
    "load_reward_config",
    "lookup_counts",
    "relevance_tier",
]
