"""The TPMA-GRPO composite item reward (OneSearch-V2) and the weights of its terms.

Relevance is the guard against reward hacking: a policy that learns to surface clickbait raises the
click and CTR terms only by a little, while the relevance tier (0-3) makes an irrelevant item lose to
a relevant one with the same clicks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onesearch_ray.config import parse_config, read_yaml_section, require_non_negative


@dataclass
class RewardConfig:
    """Weights of every reward term (YAML section ``rewards:``)."""

    calibration_lambda: float = 1.0  # lambda of the calibrated CTR/CVR harmonic mean
    # R_item = click_order_weight * (ordered_score | clicked_score | 0)
    #   + ctr_weight * clip(calibrated ctr, 0, 1) + tier_weight * tier (0-3).
    ordered_score: float = 4.0
    clicked_score: float = 3.0
    click_order_weight: float = 1.0
    ctr_weight: float = 1.0
    tier_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.calibration_lambda <= 0:
            raise ValueError("calibration_lambda must be > 0")
        require_non_negative(self, ("click_order_weight", "ctr_weight", "tier_weight"))
        if not self.ordered_score >= self.clicked_score >= 0:
            raise ValueError("expected ordered_score >= clicked_score >= 0")


def load_reward_config(path: str | Path | None = None) -> RewardConfig:
    """The ``rewards:`` section of a config file (defaults without one)."""
    return parse_config(RewardConfig, read_yaml_section(path, "rewards"), str(path or "defaults"))


def composite_item_reward(ordered, clicked, ctr, tier, config: RewardConfig) -> np.ndarray:
    """V2 R_item of rollouts, element-wise (a rollout is an item: trie-constrained decoding never
    emits an invalid SID, so the paper's format term would be the same constant for all)."""
    ordered, clicked = (np.asarray(x, dtype=bool) for x in (ordered, clicked))
    click_order = np.where(ordered, config.ordered_score, np.where(clicked, config.clicked_score, 0.0))
    reward = (
        config.click_order_weight * click_order
        + config.ctr_weight * np.clip(np.asarray(ctr, dtype=np.float64), 0.0, 1.0)
        + config.tier_weight * np.asarray(tier, dtype=np.float64)
    )
    return reward
