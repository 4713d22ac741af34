"""TPMA-GRPO's advantages and loss (OneSearch-V2), pure torch; ``generator.grpo`` applies them.

The exact forms are in ``docs/onesearch.md`` ("The RL losses in exact form"); where that text leaves a
detail open, the public ``onesearch-family`` code decides and the docstring says so. A rollout is a
sequence of L tokens (the generator's: its code tokens, then its item).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

GROUP_EPS = 1e-8  # the std floor of group normalisation


def position_weights(length: int) -> torch.Tensor:
    """w_l (1-based l): 2 for l = 1, 2; 1 for 3 <= l < L; 0 for l = L -- except that l <= 2 keeps 2
    when L <= 2 (the reference code's order of cases)."""
    if length < 1:
        raise ValueError(f"SID length must be >= 1, got {length}")
    weights = torch.ones(length)
    weights[-1] = 0.0
    weights[: min(2, length)] = 2.0
    return weights


class TPMAAdvantages(NamedTuple):
    advantages: torch.Tensor  # (B, G, L), gated in the loss
    gates: torch.Tensor  # (B, G, L), in [0, 1]
    prefix_rewards: torch.Tensor  # (B, G, L), R_{i,l}
    item_advantages: torch.Tensor  # (B, G): w_item * the group-normalised item reward


def group_normalize(values: torch.Tensor, dim: int, std_floor: float = 0.0) -> torch.Tensor:
    """(x - mean) / (max(std, std_floor) + 1e-8) over ``dim`` (the G rollouts); unbiased std, as
    ``Tensor.std``. The paper's form is ``std_floor`` 0."""
    std = values.std(dim=dim, keepdim=True).clamp(min=std_floor)
    return (values - values.mean(dim=dim, keepdim=True)) / (std + GROUP_EPS)


def tpma_advantages(
    rollouts: torch.Tensor,
    ground_truth: torch.Tensor,
    gt_mask: torch.Tensor | None = None,
    item_rewards: torch.Tensor | None = None,
    w_item: float = 0.0,
    *,
    gate_item_reward: bool = True,
    item_std_floor: float = 0.0,
) -> TPMAAdvantages:
    """Per-position advantages and prefix gates of G rollouts per prompt (OneSearch-V2).

    ``rollouts`` (B, G, L) SID codes; ``ground_truth`` (B, M, L) the clicked or ordered SIDs, with
    ``gt_mask`` (B, M) False on padding (a prompt may have none: zero advantages from positions, gates
    0 after the first). R_{i,l} = max over ground truths of sum_{j<=l} w_j [o_ij = gt_j];
    A_{i,l} = group-normalised (R_{i,l} - R_{i,l-1}) + w_item * group-normalised item reward;
    g_{i,1} = 1, g_{i,l} = (best count of matches in positions < l) / (l - 1).

    Two departures from the paper, off in this function's defaults (the paper's form) and on in
    ``GRPOConfig``'s (measured better): ``gate_item_reward`` False leaves the item
    term out of ``advantages`` (``item_advantages`` alone carries it, applied to every position
    ungated by :func:`tpma_grpo_loss`): the gates close after the first position for most beams,
    which match no clicked SID there, so the gated item reward teaches only the first code.
    ``item_std_floor`` keeps a group whose rewards differ by noise (calibrated CTRs a hundredth apart)
    from being blown up to unit-variance advantages.
    """
    batch, group, length = rollouts.shape
    if group < 2:
        raise ValueError(f"tpma_advantages: group normalisation needs G >= 2 rollouts, got {group}")
    if ground_truth.dim() != 3 or ground_truth.shape[0] != batch or ground_truth.shape[2] != length:
        raise ValueError(
            f"ground_truth has shape {tuple(ground_truth.shape)}, expected ({batch}, M, {length})"
        )
    if gt_mask is None:
        gt_mask = torch.ones(ground_truth.shape[:2], dtype=torch.bool, device=ground_truth.device)
    # matches[b, i, m, l]: rollout i agrees with ground truth m at position l; padded truths match nothing.
    matches = (rollouts[:, :, None, :] == ground_truth[:, None, :, :]) & gt_mask[:, None, :, None]
    matches = matches.float()
    weights = position_weights(length).to(matches.device)
    prefix = (matches * weights).cumsum(dim=-1).amax(dim=2)  # (B, G, L)
    marginal = torch.diff(prefix, dim=-1, prepend=torch.zeros_like(prefix[..., :1]))
    advantages = group_normalize(marginal, dim=1)
    item_advantages = torch.zeros((batch, group), device=advantages.device)
    if item_rewards is not None and w_item:
        if tuple(item_rewards.shape) != (batch, group):
            raise ValueError(
                f"item_rewards has shape {tuple(item_rewards.shape)}, expected ({batch}, {group})"
            )
        item_advantages = w_item * group_normalize(item_rewards.float(), dim=1, std_floor=item_std_floor)
        if gate_item_reward:
            advantages = advantages + item_advantages[..., None]
    best_count = matches.cumsum(dim=-1).amax(dim=2)  # (B, G, L): best matches in positions <= l
    gates = torch.ones_like(prefix)
    gates[..., 1:] = best_count[..., :-1] / torch.arange(1, length, device=gates.device)
    return TPMAAdvantages(advantages, gates, prefix, item_advantages)


def tpma_grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    gates: torch.Tensor,
    reference_logprobs: torch.Tensor | None = None,
    kl_weight: float = 0.0,
    ungated_advantages: torch.Tensor | None = None,
) -> torch.Tensor:
    """-(1 / GL) sum g * exp(logpi - logpi_old) * A per prompt, averaged over the batch; no clipping.

    All inputs (B, G, L) per SID token. ``ungated_advantages`` (B, G), when given, is added to
    g * A at every position of its rollout (the ungated item reward of :func:`tpma_advantages`).
    With ``reference_logprobs`` and ``kl_weight``, the KL guard adds kl_weight * the mean of the k3
    estimator exp(ref - pi) - (ref - pi) - 1 (>= 0, unbiased).
    """
    ratio = torch.exp(logprobs - old_logprobs.detach())
    weights = gates * advantages
    if ungated_advantages is not None:
        weights = weights + ungated_advantages[..., None]
    loss = -(ratio * weights).mean()
    if kl_weight:
        if reference_logprobs is None:
            raise ValueError("tpma_grpo_loss: kl_weight needs reference_logprobs")
        delta = reference_logprobs.detach() - logprobs
        loss = loss + kl_weight * (torch.exp(delta) - delta - 1.0).mean()
    return loss
