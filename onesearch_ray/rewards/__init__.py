"""PARS rewards (``docs/onesearch.md`` section 3): feedback levels, calibrated CTR/CVR, relevance and the
combined rewards of list-wise DPO and TPMA-GRPO. Pure numpy + pyarrow (no Ray, no torch)."""

from onesearch_ray.rewards.calibration import (
    CalibratedRates,
    calibrated_rates,
    interaction_counts,
    lookup_counts,
)
from onesearch_ray.rewards.combined import (
    RewardConfig,
    composite_item_reward,
    load_reward_config,
    preference_reward,
)
from onesearch_ray.rewards.feedback import (
    FEEDBACK_SCHEMA,
    POSITIVE_LEVELS,
    FeedbackLevel,
    assign_feedback_levels,
    level_weights,
)
from onesearch_ray.rewards.relevance import RelevanceOracle, relevance_tier

__all__ = [
    "FEEDBACK_SCHEMA",
    "POSITIVE_LEVELS",
    "CalibratedRates",
    "FeedbackLevel",
    "RelevanceOracle",
    "RewardConfig",
    "assign_feedback_levels",
    "calibrated_rates",
    "composite_item_reward",
    "interaction_counts",
    "level_weights",
    "load_reward_config",
    "lookup_counts",
    "preference_reward",
    "relevance_tier",
]
