"""List-wise DPO and TPMA-GRPO losses, and SID log-probs under a causal LM (CPU, no Ray)."""

from __future__ import annotations

import copy
import math
import statistics

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from onesearch_ray.train.preference import (
    listwise_dpo_loss,
    position_weights,
    sid_token_logprobs,
    tpma_advantages,
    tpma_grpo_loss,
)

VOCAB = 48


def _t(*values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _toy(**overrides):
    """One row, two negatives: c = 0.5, r = (0.5, -1.0), gaps (2, 1)."""
    inputs = {
        "policy_pos": _t(-1.0),
        "reference_pos": _t(-1.5),
        "policy_neg": _t([-2.0, -3.0]),
        "reference_neg": _t([-2.5, -2.0]),
        "reward_pos": _t(3.0),
        "reward_neg": _t([1.0, 2.0]),
    }
    return {**inputs, **overrides}


def _tiny_lm(seed: int = 0) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    )
    return Qwen3ForCausalLM(config).float()


# --- list-wise DPO --------------------------------------------------------------------------------


def test_listwise_dpo_matches_hand_computation():
    beta = 0.5
    # w = (max(3, 1) - R-)^-1.5 + 1 = (2^-1.5 + 1, 1^-1.5 + 1); exponents w * beta * (r_k - c).
    w1, w2 = 2**-1.5 + 1, 2.0
    z1, z2 = w1 * beta * (0.5 - 0.5), w2 * beta * (-1.0 - 0.5)  # 0 and -1.5
    expected = -math.log(1 / (1 + math.exp(math.log(math.exp(z1) + math.exp(z2)))))
    assert expected == pytest.approx(0.798916, abs=1e-6)
    out = listwise_dpo_loss(**_toy(), beta=beta)
    assert out.loss.item() == pytest.approx(expected, abs=1e-9)
    # The SFT anchor adds lambda * -log pi(y+) = 0.1 * 1.0.
    anchored = listwise_dpo_loss(**_toy(), beta=beta, sft_weight=0.1)
    assert anchored.loss.item() == pytest.approx(expected + 0.1, abs=1e-9)
    assert anchored.anchor.item() == pytest.approx(1.0)


def test_listwise_dpo_guard_pushes_a_positive_below_the_reference():
    beta = 0.5
    below = _toy(policy_pos=_t(-2.0))  # c = -0.5, relu(ref - pi) = 0.5
    w1, w2 = 2**-1.5 + 1, 2.0
    z1, z2 = w1 * beta * (0.5 + 0.5 + 0.5), w2 * beta * (0.5 - 1.0 + 0.5)
    expected = math.log(1 + math.exp(z1) + math.exp(z2))  # -log sigmoid(-log S) = log(1 + S)
    guarded = listwise_dpo_loss(**below, beta=beta, guard_weight=1.0).loss.item()
    assert guarded == pytest.approx(expected, abs=1e-9)
    assert guarded > listwise_dpo_loss(**below, beta=beta).loss.item()
    # Above the reference the guard is 0.
    assert listwise_dpo_loss(**_toy(), beta=beta, guard_weight=1.0).loss.item() == pytest.approx(
        listwise_dpo_loss(**_toy(), beta=beta).loss.item()
    )


def test_listwise_dpo_gradient_direction():
    inputs = _toy()
    policy_pos = inputs["policy_pos"].clone().requires_grad_()
    policy_neg = inputs["policy_neg"].clone().requires_grad_()
    loss = listwise_dpo_loss(**{**inputs, "policy_pos": policy_pos, "policy_neg": policy_neg}, beta=0.5).loss
    loss.backward()
    assert policy_pos.grad.item() < 0  # raising the positive's log-prob lowers the loss
    assert (policy_neg.grad > 0).all()  # raising a negative's raises it
    base = loss.item()
    up_pos = listwise_dpo_loss(**_toy(policy_pos=_t(-0.9)), beta=0.5).loss.item()
    up_neg = listwise_dpo_loss(**_toy(policy_neg=_t([-1.9, -3.0])), beta=0.5).loss.item()
    assert up_pos < base < up_neg


def test_listwise_dpo_masks_missing_negatives():
    beta = 0.5
    reference = listwise_dpo_loss(**_toy(), beta=beta).loss
    batch = {
        "policy_pos": torch.tensor([-1.0, -1.0], dtype=torch.float64),
        "reference_pos": torch.tensor([-1.5, -1.5], dtype=torch.float64),
        "policy_neg": torch.tensor(
            [[-2.0, -3.0, 7.0], [-2.0, -3.0, -4.0]], dtype=torch.float64
        ).requires_grad_(),
        "reference_neg": torch.tensor([[-2.5, -2.0, 0.0], [-2.5, -2.0, -2.0]], dtype=torch.float64),
        "reward_pos": torch.tensor([3.0, 3.0], dtype=torch.float64),
        # 99 would make the gap negative: masked, it must not matter.
        "reward_neg": torch.tensor([[1.0, 2.0, 99.0], [1.0, 2.0, 2.5]], dtype=torch.float64),
    }
    mask = torch.tensor([[True, True, False], [True, True, True]])
    out = listwise_dpo_loss(**batch, neg_mask=mask, beta=beta)
    out.loss.backward()
    third = listwise_dpo_loss(
        **_toy(
            policy_neg=_t([-2.0, -3.0, -4.0]),
            reference_neg=_t([-2.5, -2.0, -2.0]),
            reward_neg=_t([1.0, 2.0, 2.5]),
        ),
        beta=beta,
    ).loss
    assert out.loss.item() == pytest.approx((reference.item() + third.item()) / 2, abs=1e-9)
    grad = batch["policy_neg"].grad
    assert torch.isfinite(grad).all() and grad[0, 2] == 0


def test_listwise_dpo_near_ties_weigh_as_the_minimum_gap():
    """A negative a hair below the positive weighs as one min_gap below it, not ~1e9 times more."""
    near_tie = listwise_dpo_loss(**_toy(reward_neg=_t([1.0, 3.0 - 1e-6])), beta=0.5).loss
    at_min_gap = listwise_dpo_loss(**_toy(reward_neg=_t([1.0, 2.9])), beta=0.5).loss
    assert near_tie.item() == pytest.approx(at_min_gap.item()) and near_tie.item() < 10


def test_listwise_dpo_rejects_bad_input():
    with pytest.raises(ValueError, match="below max"):
        listwise_dpo_loss(**_toy(reward_neg=_t([1.0, 3.0])), beta=0.5)
    with pytest.raises(ValueError, match="at least one negative"):
        listwise_dpo_loss(**_toy(), neg_mask=torch.tensor([[False, False]]), beta=0.5)
    with pytest.raises(ValueError, match="reward_neg has shape"):
        listwise_dpo_loss(**_toy(reward_neg=_t([1.0, 2.0, 0.0])), beta=0.5)


# --- TPMA-GRPO ------------------------------------------------------------------------------------


def test_position_weights():
    assert position_weights(5).tolist() == [2, 2, 1, 1, 0]
    assert position_weights(3).tolist() == [2, 2, 0]
    assert position_weights(2).tolist() == [2, 2]  # l <= 2 wins over l = L, as in the reference code


def _zscores(values: list[float]) -> list[float]:
    mean, std = statistics.fmean(values), statistics.stdev(values)
    return [(v - mean) / (std + 1e-8) for v in values]


def test_tpma_advantages_and_gates_on_a_hand_made_group():
    # L = 4, weights (2, 2, 1, 0); two ground truths; a third, padded one must change nothing.
    rollouts = torch.tensor([[[1, 2, 3, 4], [1, 5, 9, 9], [8, 2, 3, 9]]])
    truths = torch.tensor([[[1, 2, 3, 4], [1, 5, 6, 7], [8, 2, 3, 9]]])
    mask = torch.tensor([[True, True, False]])
    out = tpma_advantages(rollouts, truths, mask)
    # R per rollout: (2,4,5,5) exact; (2,4,4,4) via the 2nd truth; (0,2,3,3) positions 2-3 of the 1st.
    assert out.prefix_rewards[0].tolist() == [[2, 4, 5, 5], [2, 4, 4, 4], [0, 2, 3, 3]]
    # dR columns: (2,2,0), (2,2,2), (1,0,1), (0,0,0); a constant column normalises to 0.
    columns = [_zscores([2, 2, 0]), [0.0] * 3, _zscores([1, 0, 1]), [0.0] * 3]
    expected = torch.tensor(columns, dtype=torch.float32).T
    torch.testing.assert_close(out.advantages[0], expected)
    # Gates: best unweighted matches before l over l - 1: (1,2,3) / (1,2,3); (1,2,2); (0,1,2).
    gates = [[1, 1, 1, 1], [1, 1, 1, 2 / 3], [1, 0, 1 / 2, 2 / 3]]
    torch.testing.assert_close(out.gates[0], torch.tensor(gates))
    # The item reward's group z-score, times w_item, is added at every position.
    items = torch.tensor([[8.4, 7.0, 1.0]])
    with_items = tpma_advantages(rollouts, truths, mask, item_rewards=items, w_item=0.5)
    z = torch.tensor(_zscores([8.4, 7.0, 1.0]))
    torch.testing.assert_close(with_items.advantages[0], expected + 0.5 * z[:, None])
    torch.testing.assert_close(with_items.item_advantages[0], 0.5 * z)
    # Ungated: the item term leaves the gated advantages; a std floor above the group's std (4.0
    # here) scales the z-scores down instead of up.
    ungated = tpma_advantages(
        rollouts, truths, mask, item_rewards=items, w_item=0.5, gate_item_reward=False, item_std_floor=10.0
    )
    torch.testing.assert_close(ungated.advantages[0], expected)
    centred = items[0] - items[0].mean()
    torch.testing.assert_close(ungated.item_advantages[0], 0.5 * centred / (10.0 + 1e-8))


def test_tpma_prompt_without_ground_truth_and_bad_groups():
    rollouts = torch.tensor([[[1, 2], [3, 4]]])
    out = tpma_advantages(rollouts, torch.zeros((1, 1, 2), dtype=torch.long), torch.tensor([[False]]))
    assert out.advantages.abs().sum() == 0 and out.gates[0].tolist() == [[1, 0], [1, 0]]
    with pytest.raises(ValueError, match="G >= 2"):
        tpma_advantages(rollouts[:, :1], rollouts[:, :1])


def test_tpma_loss_value_and_gradient():
    advantages = torch.tensor([[[1.0, -2.0], [0.5, 0.0]]])
    gates = torch.tensor([[[1.0, 0.5], [1.0, 1.0]]])
    old = torch.tensor([[[-1.0, -2.0], [-0.5, -3.0]]])
    logprobs = old.clone().requires_grad_()
    loss = tpma_grpo_loss(logprobs, old, advantages, gates)
    # Ratio 1: -(1/GL) sum g * A = -(1 - 1 + 0.5 + 0) / 4.
    assert loss.item() == pytest.approx(-0.125)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -(gates * advantages) / 4)
    # The k3 KL guard is 0 at the reference and positive away from it.
    assert tpma_grpo_loss(logprobs, old, advantages, gates, old, kl_weight=1.0).item() == pytest.approx(
        -0.125
    )
    assert tpma_grpo_loss(logprobs, old, advantages, gates, old - 1.0, kl_weight=1.0).item() > -0.125
    # An ungated item advantage per rollout reaches every position, whatever the gate.
    item = torch.tensor([[2.0, -1.0]])
    logprobs.grad = None
    loss = tpma_grpo_loss(logprobs, old, advantages, gates, ungated_advantages=item)
    assert loss.item() == pytest.approx(-(0.5 + 2.0 * 2 - 1.0 * 2) / 4)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, -(gates * advantages + item[..., None]) / 4)


# --- SID log-probs and short optimisations --------------------------------------------------------


def test_sid_token_logprobs_match_a_per_row_forward():
    model = _tiny_lm().eval()
    prompts = [[3, 7, 11], [5], [2, 9, 4, 4, 8]]
    sids = torch.tensor([[20, 30, 40], [21, 31, 41], [22, 32, 47]])
    got = sid_token_logprobs(model, prompts, sids)
    for row, prompt in enumerate(prompts):
        ids = torch.tensor([prompt + sids[row].tolist()])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = logprobs[len(prompt) - 1 : len(prompt) + 2].gather(1, sids[row][:, None]).squeeze(1)
        torch.testing.assert_close(got[row], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        sid_token_logprobs(model, [[], [1], [2]], sids)


def _preferred_share(model, prompts, candidates) -> torch.Tensor:
    """Per prompt, the softmax share of candidate 0 among its candidates' sequence log-probs."""
    with torch.no_grad():
        rows = [p for p in prompts for _ in range(candidates.shape[1])]
        scores = sid_token_logprobs(model, rows, candidates.flatten(0, 1)).sum(-1).view(candidates.shape[:2])
    return torch.softmax(scores, dim=1)[:, 0]


def test_short_dpo_run_moves_probability_to_the_preferred_sid():
    policy = _tiny_lm(seed=1)
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    prompts = [[3, 7, 11], [5, 6]]
    generator = torch.Generator().manual_seed(0)
    candidates = torch.randint(16, VOCAB, (2, 4, 3), generator=generator)  # (prompt, candidate, L)
    before = _preferred_share(policy, prompts, candidates)
    rows = [p for p in prompts for _ in range(4)]
    flat = candidates.flatten(0, 1)
    with torch.no_grad():
        ref = sid_token_logprobs(reference, rows, flat).sum(-1).view(2, 4)
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    for _ in range(150):
        scores = sid_token_logprobs(policy, rows, flat).sum(-1).view(2, 4)
        out = listwise_dpo_loss(
            scores[:, 0],
            ref[:, 0],
            scores[:, 1:],
            ref[:, 1:],
            reward_pos=torch.tensor([3.0, 3.0]),
            reward_neg=torch.tensor([[1.0, 0.5, 0.2], [1.0, 0.5, 0.2]]),
            beta=1.0,  # no SFT anchor: the list-wise term alone must move the probability
        )
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    after = _preferred_share(policy, prompts, candidates)
    assert (before < 0.5).all(), before  # four candidates start near a quarter each
    assert (after > 0.9).all(), (before, after)
    with torch.no_grad():  # and the preferred SID itself gained probability, not only its rivals lost
        final = sid_token_logprobs(policy, rows, flat).sum(-1).view(2, 4)
    assert (final[:, 0] > ref[:, 0]).all(), (final[:, 0], ref[:, 0])


def test_short_grpo_run_moves_probability_to_the_ground_truth():
    """A free per-position logits table as the policy: rollouts sampled, TPMA advantages, one step each."""
    torch.manual_seed(0)
    logits = torch.zeros(3, 6, requires_grad=True)  # L = 3 positions, 6 codes each
    truth = torch.tensor([1, 4, 2])
    optimizer = torch.optim.Adam([logits], lr=0.1)

    def truth_prob() -> float:
        return torch.log_softmax(logits, -1).gather(1, truth[:, None]).sum().exp().item()

    before = truth_prob()
    for _ in range(100):
        logprob_table = torch.log_softmax(logits, -1)
        rollouts = torch.multinomial(logprob_table.exp().detach(), 16, replacement=True).T  # (G, L)
        logprobs = logprob_table.gather(1, rollouts.T).T[None]  # (1, G, L)
        exact = (rollouts == truth).all(dim=1).float()[None]
        out = tpma_advantages(rollouts[None], truth[None, None], item_rewards=exact, w_item=1.0)
        loss = tpma_grpo_loss(logprobs, logprobs.detach(), out.advantages, out.gates)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert before == pytest.approx(1 / 216)
    assert truth_prob() > 0.5
