"""Preference losses after SFT: list-wise DPO (OneSearch) and TPMA-GRPO (OneSearch-V2). Pure torch.

The exact forms are in ``docs/onesearch.md`` ("The RL losses in exact form"); where that text leaves a
detail open, the public ``onesearch-family`` code decides and the docstring says so. Log-probs of a SID
are those the evaluation scores it with: full-vocabulary log_softmax at each SID position
(:func:`sid_token_logprobs`); a sequence's log-prob is their sum.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

GROUP_EPS = 1e-8  # the std floor of group normalisation


class ListwiseDPOLoss(NamedTuple):
    loss: torch.Tensor  # scalar, the batch mean, differentiable
    preference: torch.Tensor  # scalar, batch mean of the list-wise term (detached, for logs)
    anchor: torch.Tensor  # scalar, batch mean of -log pi(y+|x) (detached, for logs)


def listwise_dpo_loss(
    policy_pos: torch.Tensor,
    reference_pos: torch.Tensor,
    policy_neg: torch.Tensor,
    reference_neg: torch.Tensor,
    reward_pos: torch.Tensor,
    reward_neg: torch.Tensor,
    neg_mask: torch.Tensor | None = None,
    *,
    beta: float,
    alpha: float = 1.5,
    sft_weight: float = 0.0,
    guard_weight: float = 0.0,
    min_gap: float = 0.1,
) -> ListwiseDPOLoss:
    """One positive against K negatives per row, weighted by the reward gap.

    Shapes: ``*_pos`` and ``reward_pos`` (B,); ``*_neg``, ``reward_neg`` and ``neg_mask`` (B, K),
    the mask False where a row has fewer negatives. With c = logpi(y+) - logref(y+),
    r_k = logpi(y_k) - logref(y_k) and w_k = (max(R+, 1) - R-_k)^(-alpha) + 1:

        loss = -log sigmoid(-log sum_k exp(w_k * beta * (guard + r_k - c))) + sft_weight * -logpi(y+)

    with guard = guard_weight * relu(logref(y+) - logpi(y+)) (inside the weighted difference, as in
    the reference code), so a positive that falls below the reference is pushed harder. w_k is
    largest for small gaps: near-ties are the pairs the policy still confuses; a gap counts as at
    least ``min_gap``, which bounds w_k (the paper leaves it unbounded).
    """
    if policy_neg.dim() != 2:
        raise ValueError(
            f"listwise_dpo_loss: policy_neg has shape {tuple(policy_neg.shape)}, expected (B, K)"
        )
    batch, k = policy_neg.shape
    if neg_mask is None:
        neg_mask = torch.ones_like(policy_neg, dtype=torch.bool)
    for name, tensor, shape in (
        ("reference_pos", reference_pos, (batch,)),
        ("policy_pos", policy_pos, (batch,)),
        ("reward_pos", reward_pos, (batch,)),
        ("reference_neg", reference_neg, (batch, k)),
        ("reward_neg", reward_neg, (batch, k)),
        ("neg_mask", neg_mask, (batch, k)),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"listwise_dpo_loss: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    neg_mask = neg_mask.bool()
    if not neg_mask.any(dim=1).all():
        raise ValueError("listwise_dpo_loss: every row needs at least one negative (drop rows without)")
    gap = reward_pos.clamp(min=1.0)[:, None] - reward_neg
    if (gap[neg_mask] <= 0).any():
        raise ValueError("listwise_dpo_loss: a negative's reward must be below max(R+, 1)")
    # Masked entries get gap 1 before the power: a NaN there would poison the gradient through where().
    # Gaps below min_gap count as min_gap: the paper's weight is unbounded for near-ties (a gap of
    # 0.001 weighs ~3e4 at alpha 1.5) and one such pair would swamp its batch.
    weight = torch.where(neg_mask, gap.clamp(min=min_gap), torch.ones_like(gap)).pow(-alpha) + 1.0
    chosen = policy_pos - reference_pos
    guard = guard_weight * torch.relu(reference_pos - policy_pos)
    logits = weight * beta * (guard[:, None] + (policy_neg - reference_neg) - chosen[:, None])
    logits = logits.masked_fill(~neg_mask, float("-inf"))
    preference = -F.logsigmoid(-torch.logsumexp(logits, dim=1))
    anchor = -policy_pos
    loss = (preference + sft_weight * anchor).mean()
    return ListwiseDPOLoss(loss, preference.detach().mean(), anchor.detach().mean())


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


def sid_token_logprobs(
    model: torch.nn.Module, prompt_ids: Sequence[Sequence[int]], sid_ids: torch.Tensor, pad_id: int = 0
) -> torch.Tensor:
    """log pi(sid token l | prompt, earlier sid tokens), (B, L), differentiable (wrap in no_grad for a
    frozen reference).

    ``prompt_ids``: B token-id lists, already encoded as the engines encode them (``encode_prompts``,
    left-aligned to the model's prompt block); ``sid_ids`` (B, L) vocabulary ids of the SID tokens.
    Rows are right-padded (the prompt keeps its positions, as in SFT's ``collate``) and the output head
    runs only at the positions that predict a SID token.
    """
    batch, length = sid_ids.shape
    if len(prompt_ids) != batch:
        raise ValueError(f"sid_token_logprobs: {len(prompt_ids)} prompts but {batch} SID rows")
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("sid_token_logprobs: every prompt needs at least one token")
    device = sid_ids.device
    lengths = torch.tensor([len(p) for p in prompt_ids], device=device)
    width = int(lengths.max()) + length
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((batch, width), dtype=torch.long, device=device)
    for row, prompt in enumerate(prompt_ids):
        n = len(prompt)
        input_ids[row, :n] = torch.as_tensor(list(prompt), dtype=torch.long, device=device)
        input_ids[row, n : n + length] = sid_ids[row]
        attention[row, : n + length] = 1
    # Position p predicts token p + 1: SID token l of a row is predicted at prompt length - 1 + l.
    positions = lengths[:, None] - 1 + torch.arange(length, device=device)
    kept = torch.unique(positions)
    logits = model(input_ids=input_ids, attention_mask=attention, logits_to_keep=kept).logits
    logits = logits[torch.arange(batch, device=device)[:, None], torch.searchsorted(kept, positions)]
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, sid_ids[..., None]).squeeze(-1)
