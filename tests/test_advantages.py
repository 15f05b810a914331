"""Advantages against hand-computed numbers (arithmetic in the comments)."""

import math
import random

import pytest
import torch

from r1lab.advantages import gae, group_advantages, process_advantages, whiten, zero_spread_groups

NAN = float("nan")


def close(actual, expected, atol=1e-5):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- group_advantages / zero_spread_groups ---------------------------------------------------

def test_group_advantages_two_groups_sample_std():
    # group 1 [1, 0, 0, 0]: mean 0.25, deviations [0.75, -0.25, -0.25, -0.25],
    #   sample var = (0.5625 + 3 * 0.0625) / (4 - 1) = 0.25, std 0.5 -> [1.5, -0.5, -0.5, -0.5]
    # group 2 [1, 1, 1, 1]: all equal -> exactly 0
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    adv = group_advantages(rewards, 4)
    close(adv[:4], [1.5, -0.5, -0.5, -0.5])
    assert torch.equal(adv[4:], torch.zeros(4))


def test_group_advantages_without_std():
    # Dr. GRPO: only r - mean -> [0.75, -0.25, -0.25, -0.25], then the equal group's zeros
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    close(group_advantages(rewards, 4, scale_by_std=False), [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0])


def test_group_advantages_three_values():
    # [0, 1, 2]: mean 1, sample var (1 + 0 + 1) / 2 = 1 -> [-1, 0, 1]
    # [0.1, 0.1, 0.1]: the float mean may round away from 0.1, but the answer must be exactly 0
    adv = group_advantages(torch.tensor([0.0, 1.0, 2.0, 0.1, 0.1, 0.1]), 3)
    close(adv[:3], [-1.0, 0.0, 1.0])
    assert torch.equal(adv[3:], torch.zeros(3))


def test_group_advantages_integer_rewards_and_group_of_one():
    # integer rewards are accepted; [1, 0] -> mean 0.5, sample std sqrt(0.5) = 0.7071 -> ±0.7071
    close(group_advantages(torch.tensor([1, 0]), 2), [0.70711, -0.70711])
    # G = 1: no spread, no signal (not NaN)
    assert torch.equal(group_advantages(torch.tensor([3.0, 5.0]), 1), torch.zeros(2))


def test_group_advantages_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="1-D"):
        group_advantages(torch.zeros(2, 4), 4)
    with pytest.raises(ValueError):
        group_advantages(torch.zeros(4), 0)


def test_zero_spread_groups():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    assert zero_spread_groups(rewards, 4).tolist() == [False, True, True]
    with pytest.raises(ValueError):
        zero_spread_groups(rewards, 5)


# --- process supervision --------------------------------------------------------------------

def test_process_advantages():
    # G = 2. completion 0: steps rewarded [1, 0] ending at tokens [1, 3]; completion 1: one step [1] ending at 2.
    # pooled group rewards [1, 0, 1]: mean 2/3, sample var ((1/3)² + (2/3)² + (1/3)²) / 2 = 1/3, std 0.57735
    # normalised: 1 -> (1/3) / 0.57735 = 0.57735, 0 -> (-2/3) / 0.57735 = -1.15470
    # row 0: tokens 0-1 sum both steps 0.57735 - 1.15470 = -0.57735; tokens 2-3 only step 2: -1.15470; token 4: 0
    # row 1: tokens 0-2: 0.57735; after: 0
    adv = process_advantages([[1.0, 0.0], [1.0]], [[1, 3], [2]], group_size=2, num_tokens=5)
    close(adv, [[-0.57735, -0.57735, -1.15470, -1.15470, 0.0], [0.57735, 0.57735, 0.57735, 0.0, 0.0]])


def test_process_advantages_equal_group_and_errors():
    assert torch.equal(process_advantages([[1.0], [1.0, 1.0]], [[0], [0, 1]], 2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError):
        process_advantages([[1.0]], [[5]], 1, 3)  # step ends past T
    with pytest.raises(ValueError):
        process_advantages([[1.0], [0.0]], [[0, 1], [0]], 2, 3)  # two ends for one reward


# --- GAE ------------------------------------------------------------------------------------

def test_gae_hand_numbers_two_rows_of_different_lengths():
    # γ = 0.9, λ = 0.5, γλ = 0.45
    # row 0 (3 tokens): r = [0, 0, 1], V = [0.5, 0.4, 0.8]
    #   t=2: δ = 1 + 0.9·0 - 0.8 = 0.2                       A = 0.2
    #   t=1: δ = 0 + 0.9·0.8 - 0.4 = 0.32                    A = 0.32 + 0.45·0.2 = 0.41
    #   t=0: δ = 0 + 0.9·0.4 - 0.5 = -0.14                   A = -0.14 + 0.45·0.41 = 0.0445
    #   returns = A + V = [0.5445, 0.81, 1.0]
    # row 1 (2 tokens, then padding holding NaN that must be ignored): r = [0, 2], V = [1.0, 0.5]
    #   t=1: δ = 2 + 0.9·0 - 0.5 = 1.5 (V after the last token is 0)   A = 1.5
    #   t=0: δ = 0 + 0.9·0.5 - 1.0 = -0.55                   A = -0.55 + 0.45·1.5 = 0.125
    #   returns = [1.125, 2.0, 0]
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, NAN]])
    values = torch.tensor([[0.5, 0.4, 0.8], [1.0, 0.5, NAN]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    close(adv, [[0.0445, 0.41, 0.2], [0.125, 1.5, 0.0]])
    close(ret, [[0.5445, 0.81, 1.0], [1.125, 2.0, 0.0]])


def test_gae_reinforce_reward_to_go():
    # γ = λ = 1 and V = 0: A_t = Σ_{l≥t} r_l. row 0 [1, 2, 3] -> [6, 5, 3]; row 1 [4, 5, pad] -> [9, 5, 0]
    rewards = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, torch.zeros(2, 3), mask, gamma=1.0, lam=1.0)
    close(adv, [[6.0, 5.0, 3.0], [9.0, 5.0, 0.0]])
    close(ret, adv)


def _gae_one_row(rewards, values, gamma, lam):
    """Textbook GAE on one unpadded row of python floats."""
    advantages, running = [0.0] * len(rewards), 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        advantages[t] = running
    return advantages


def test_gae_matches_per_row_python_loop():
    rng = random.Random(0)
    lengths, T, gamma, lam = [5, 1, 3, 0, 4], 5, 0.97, 0.8
    rewards, values, mask = torch.full((5, T), NAN), torch.full((5, T), NAN), torch.zeros(5, T)
    expected = torch.zeros(5, T)
    for i, n in enumerate(lengths):
        r = [rng.uniform(-1, 1) for _ in range(n)]
        v = [rng.uniform(-1, 1) for _ in range(n)]
        rewards[i, :n], values[i, :n], mask[i, :n] = torch.tensor(r), torch.tensor(v), 1.0
        expected[i, :n] = torch.tensor(_gae_one_row(r, v, gamma, lam))
    adv, ret = gae(rewards, values, mask, gamma=gamma, lam=lam)
    close(adv, expected)
    close(ret, torch.where(mask.bool(), expected + values, 0.0))


def test_gae_skips_masked_hole_and_gives_no_grad():
    # a masked position inside a row (e.g. tool output) is skipped: [r0, hole, r2] behaves like [r0, r2]
    values = torch.tensor([[0.3, 9.0, -0.2]], requires_grad=True)
    adv, ret = gae(torch.tensor([[1.0, 5.0, 2.0]]), values, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.5)
    compact, _ = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.3, -0.2]]), torch.ones(1, 2), gamma=0.9, lam=0.5)
    close(adv[:, [0, 2]], compact)
    assert adv[0, 1] == 0 and not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError):
        gae(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2, 3))


# --- whiten ---------------------------------------------------------------------------------

def test_whiten_masked():
    # masked-in entries 1, 2, 3, 4: mean 2.5, sample var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3, std 1.290994
    # (x - 2.5) / 1.290994 -> [-1.161895, -0.387298, 0.387298, 1.161895]; padding (NaN here) -> 0
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    out = whiten(values, mask)
    close(out, [[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])
    out[0, 0].backward()
    assert torch.isfinite(values.grad).all() and (values.grad[~mask] == 0).all()
    # shift_mean=False only rescales: x / 1.290994 -> [0.774597, 1.549193, 2.323790, 3.098387]
    close(whiten(values.detach(), mask, shift_mean=False), [[0.774597, 1.549193, 2.323790], [3.098387, 0.0, 0.0]])


def test_whiten_single_value_is_finite():
    out = whiten(torch.tensor([[5.0, 0.0]]), torch.tensor([[1, 0]]))
    assert torch.equal(out, torch.zeros(1, 2))
    assert math.isfinite(out.sum().item())


def test_whiten_over_parts_held_by_several_processes_equals_whitening_the_whole():
    # the rows [1, 2, 3] and [4, pad, pad] of test_whiten_masked held by two "ranks" (threads here): sum_over adds
    # both parts' values as an all-reduce would, so each part is whitened with the whole batch's mean 2.5 and
    # std 1.290994
    import threading

    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    posted, results = [None, None], [None, None]
    meet = threading.Barrier(2)

    def rank(i):
        def sum_over(x):
            posted[i] = x.clone()
            meet.wait()
            total = posted[0] + posted[1]
            meet.wait()  # both have read before either posts the next value
            return total
        results[i] = whiten(values[i:i + 1], mask[i:i + 1], sum_over=sum_over)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    close(torch.cat(results), [[-1.161895, -0.387298, 0.387298], [1.161895, 0.0, 0.0]])
    # each part whitened alone would not be: row 2 has one entry and would come out 0
    assert whiten(values[1:], mask[1:]).abs().sum() == 0
