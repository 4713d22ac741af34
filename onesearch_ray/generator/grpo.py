"""TPMA-GRPO on the generator (OneSearch-V2; exact form in ``docs/onesearch.md``).

A prompt is a logged train search (the user's query and recent items, what they clicked and
ordered); a share of them is asked again as a new user would be (no history). Its G rollouts are the
generator's own top-G ranking (``generator.search``, the scoring it serves with). A rollout is a
sequence of L code tokens then its item:

- position rewards (TPMA): the rollout's codes and item against the clicked and ordered items';
- the composite item reward (ordered/clicked in this search, calibrated CTR from the log's counts,
  relevance tier; ``rewards.composite_item_reward``), group-normalised and applied ungated to every
  position (the measured form of ``generator.tpma.tpma_advantages``);
- log-probabilities: each code level's softmax teacher-forced on the rollout's prefix, and the item
  step's softmax over the whole catalogue;
- one on-policy update per batch with a k3 KL guard to the frozen start (the reference).

The rest of the loop (optimizer groups, batches, resumable checkpoints, workers) is ``generator.train``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from onesearch_ray.data import Track
from onesearch_ray.generator.config import GRPOConfig
from onesearch_ray.generator.examples import ORDER_GAIN
from onesearch_ray.generator.model import CodeItemGenerator, PromptBatch
from onesearch_ray.generator.search import beam_search
from onesearch_ray.generator.tpma import tpma_advantages, tpma_grpo_loss
from onesearch_ray.generator.train import Example, example_prompts, item_logits
from onesearch_ray.rewards import (
    RelevanceOracle,
    RewardConfig,
    calibrated_rates,
    composite_item_reward,
    interaction_counts,
    lookup_counts,
    relevance_tier,
)


@dataclass
class ItemRewardTable:
    """What scores a rollout: calibrated CTR per catalogue row (from the log) and graded relevance."""

    config: RewardConfig
    item_ids: np.ndarray  # catalogue row -> item id
    ctr: np.ndarray  # (items,) calibrated CTR, the prior's for items the log never showed
    oracle: RelevanceOracle

    @classmethod
    def from_track(cls, track: Track, item_ids: np.ndarray, config: RewardConfig) -> ItemRewardTable:
        keys = pa.table({"item_id": pa.array(item_ids, pa.int64())})
        if track.interactions is None:
            counts = np.zeros((3, len(item_ids)))
        else:
            counts = lookup_counts(interaction_counts(track.interactions), keys)
        ctr = calibrated_rates(*counts, lam=config.calibration_lambda).ctr
        return cls(config, np.asarray(item_ids), ctr, RelevanceOracle.from_track(track))

    def rewards(self, examples: Sequence[Example], rows: np.ndarray) -> np.ndarray:
        """(B, G) composite reward of each example's rollout rows."""
        ordered = np.array(
            [np.isin(r, e.targets[e.gains >= ORDER_GAIN]) for e, r in zip(examples, rows, strict=True)]
        )
        clicked = np.array([np.isin(r, e.targets) for e, r in zip(examples, rows, strict=True)])
        grades = np.full(rows.shape, self.oracle.unjudged)
        for b, example in enumerate(examples):
            if example.query_id is not None:
                grades[b] = self.oracle.grades([example.query_id] * rows.shape[1], self.item_ids[rows[b]])
        tier = relevance_tier(grades)
        return composite_item_reward(ordered, clicked, self.ctr[rows], tier, self.config)


def grpo_prompts(examples: Sequence[Example], config: GRPOConfig) -> list[Example]:
    """A seeded sample of the searches, plus a ``new_user_share`` of them again without history."""
    rng = np.random.default_rng(config.seed)
    chosen = list(examples)
    if config.max_prompts and len(chosen) > config.max_prompts:
        chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), config.max_prompts, replace=False))]
    warm = [e for e in chosen if e.history]
    asked_new = rng.random(len(warm)) < config.new_user_share
    return chosen + [replace(e, history=[]) for e, new in zip(warm, asked_new, strict=True) if new]


def rollout_log_probs(model: CodeItemGenerator, prompts: PromptBatch, rows: np.ndarray) -> torch.Tensor:
    """(B, G, L + 1) log-probabilities of each rollout's code tokens (teacher-forced) and its item."""
    size, group = rows.shape
    levels = model.codes.levels
    codes = torch.as_tensor(model.codes.item_codes[rows.ravel()])  # (B * G, L)
    prompt = model.prompt_embeddings(prompts)
    last = prompt.shape[1] - 1
    hidden = model.hidden(prompt.repeat_interleave(group, 0), codes[:, : levels - 1] if levels > 1 else None)
    queries = prompts.query_vectors.repeat_interleave(group, 0)
    per_level = [
        F.log_softmax(model.code_logits(level, hidden[:, last + level], queries), -1)
        .gather(1, codes[:, level : level + 1])
        .view(size, group)
        for level in range(levels)
    ]
    # the item step reads the prompt's last output, the same for every rollout of a prompt
    items = F.log_softmax(item_logits(model, prompts, hidden[::group, last]), -1)
    per_level.append(items.gather(1, torch.as_tensor(rows)))
    return torch.stack(per_level, -1)


def grpo_loss_of(
    model: CodeItemGenerator,
    examples: Sequence[Example],
    rng: np.random.Generator,
    *,
    reference: CodeItemGenerator,
    rewards: ItemRewardTable,
    config: GRPOConfig,
) -> dict[str, torch.Tensor]:
    """Rollouts from the current model, TPMA advantages, the GRPO loss (``rng`` unused)."""
    prompts = example_prompts(model, examples)
    ranked = beam_search(model, prompts, config.group)
    model.train()
    if any(len(r) < config.group for r in ranked):
        raise ValueError(f"grpo: a search kept fewer than group={config.group} items; lower grpo.group")
    rows = np.array([[row for row, _ in r] for r in ranked], dtype=np.int64)
    reward = rewards.rewards(examples, rows)
    truth, truth_mask = _truth(model, examples)
    advantages = tpma_advantages(
        torch.as_tensor(_sequences(model, rows)),
        truth,
        truth_mask,
        torch.as_tensor(reward),
        config.w_item,
        gate_item_reward=False,
        item_std_floor=config.item_std_floor,
    )
    log_probs = rollout_log_probs(model, prompts, rows)
    with torch.no_grad():
        reference_log_probs = rollout_log_probs(reference, prompts, rows)
    loss = tpma_grpo_loss(
        log_probs,
        log_probs.detach(),
        advantages.advantages,
        advantages.gates,
        reference_log_probs,
        config.kl_weight,
        advantages.item_advantages,
    )
    return {"item": loss, "code": torch.zeros(()), "reward": torch.tensor(reward.mean())}


def _sequences(model: CodeItemGenerator, rows: np.ndarray) -> np.ndarray:
    """(..., L + 1): the items' codes, then the item's own row as the last token."""
    return np.concatenate([model.codes.item_codes[rows], rows[..., None]], -1)


def _truth(model: CodeItemGenerator, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
    """The clicked and ordered items as sequences (B, M, L + 1), padded with -1, and their mask (B, M)."""
    width = max(len(e.targets) for e in examples)
    truth = torch.full((len(examples), width, model.codes.levels + 1), -1, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.bool)
    for b, example in enumerate(examples):
        truth[b, : len(example.targets)] = torch.as_tensor(_sequences(model, np.asarray(example.targets)))
        mask[b, : len(example.targets)] = True
    return truth, mask
