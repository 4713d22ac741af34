"""TPMA-GRPO's advantages, gates and loss on hand-made groups (CPU, no Ray)."""

from __future__ import annotations

import statistics

import pytest
import torch

from onesearch_ray.generator.tpma import position_weights, tpma_advantages, tpma_grpo_loss


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
