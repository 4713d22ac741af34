"""Combined rewards: the list-wise DPO reward (V1) and the TPMA-GRPO composite item reward (V2).

Relevance is the guard against reward hacking: a policy that learns to surface clickbait raises the
preference terms only by a little, while ``relevance_weight`` (10x in the paper) makes an irrelevant
item lose to a relevant one whatever its clicks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onesearch_ray.config import parse_config, read_yaml_section, require_non_negative
from onesearch_ray.rewards.feedback import DEFAULT_LEVEL_WEIGHTS, FeedbackLevel
from onesearch_ray.rewards.relevance import GRADE_RANGE


@dataclass
class RewardConfig:
    """Weights of every reward term (YAML section ``rewards:``)."""

    # Weights of feedback levels 1..6 (ordered here, ordered elsewhere, clicked, shown, same category,
    # other category).
    level_weights: tuple[float, float, float, float, float, float] = DEFAULT_LEVEL_WEIGHTS
    calibration_lambda: float = 1.0  # lambda of the calibrated CTR/CVR harmonic mean
    # V1 (list-wise DPO): feedback_weight * level weight + calibrated_weight * calibrated r
    #   + relevance_weight * (grade - 1) / 2, the last term on [0, 1] like the others.
    feedback_weight: float = 1.0
    calibrated_weight: float = 1.0
    relevance_weight: float = 10.0
    # V2 (TPMA-GRPO): click_order_weight * (ordered_score | clicked_score | 0)
    #   + ctr_weight * clip(calibrated ctr, 0, 1) + tier_weight * tier (0-3) + format_weight * valid SID.
    ordered_score: float = 4.0
    clicked_score: float = 3.0
    click_order_weight: float = 1.0
    ctr_weight: float = 1.0
    tier_weight: float = 1.0
    format_weight: float = 1.0

    def __post_init__(self) -> None:
        weights = list(self.level_weights)
        if len(weights) != len(FeedbackLevel) or any(w < 0 for w in weights):
            raise ValueError(f"level_weights: {len(FeedbackLevel)} weights >= 0 expected, got {weights}")
        if any(a < b for a, b in zip(weights, weights[1:], strict=False)):
            raise ValueError(f"level_weights must not increase from level 1 to level 6, got {weights}")
        if self.calibration_lambda <= 0:
            raise ValueError("calibration_lambda must be > 0")
        require_non_negative(
            self,
            (
                "feedback_weight",
                "calibrated_weight",
                "relevance_weight",
                "click_order_weight",
                "ctr_weight",
                "tier_weight",
                "format_weight",
            ),
        )
        if not self.ordered_score >= self.clicked_score >= 0:
            raise ValueError("expected ordered_score >= clicked_score >= 0")


def load_reward_config(path: str | Path | None = None) -> RewardConfig:
    """The ``rewards:`` section of a config file (defaults without one)."""
    return parse_config(RewardConfig, read_yaml_section(path, "rewards"), str(path or "defaults"))


def preference_reward(level_weight, calibrated, grade, config: RewardConfig) -> np.ndarray:
    """V1 reward of items: feedback level weight, calibrated r and relevance grade (1..3), element-wise."""
    lo, hi = GRADE_RANGE
    relevance = (np.asarray(grade, dtype=np.float64) - lo) / (hi - lo)
    return (
        config.feedback_weight * np.asarray(level_weight, dtype=np.float64)
        + config.calibrated_weight * np.asarray(calibrated, dtype=np.float64)
        + config.relevance_weight * relevance
    )


def composite_item_reward(ordered, clicked, ctr, tier, valid, config: RewardConfig) -> np.ndarray:
    """V2 R_item of rollouts, element-wise; an invalid SID names no item and earns nothing at all."""
    ordered, clicked, valid = (np.asarray(x, dtype=bool) for x in (ordered, clicked, valid))
    click_order = np.where(ordered, config.ordered_score, np.where(clicked, config.clicked_score, 0.0))
    reward = (
        config.click_order_weight * click_order
        + config.ctr_weight * np.clip(np.asarray(ctr, dtype=np.float64), 0.0, 1.0)
        + config.tier_weight * np.asarray(tier, dtype=np.float64)
    )
    return np.where(valid, reward + config.format_weight, 0.0)
