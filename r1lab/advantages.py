"""Advantage estimation: GRPO group normalisation (outcome and process), PPO's GAE, whitening.

Pure functions of tensors (GRPO: DeepSeekMath, arXiv 2402.03300 §4.1; GAE: arXiv 1506.02438).
Shapes: B sequences, G completions per prompt (rewards laid out as consecutive groups, B = n_groups × G),
T token positions.
``mask`` (B, T), float or bool, is 1 on completion tokens and 0 on prompt and padding; entries at
masked positions are never read.

Deviation to know: the group std is the *sample* std (Bessel's correction, n − 1), as torch.std
and TRL compute it; DeepSeekMath does not say which. It only rescales all advantages of a group by
sqrt((G − 1)/G), e.g. 0.97 at G = 16.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from r1lab.losses import masked_mean


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) -> (n_groups, G), as floats."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (B,), got shape {tuple(rewards.shape)}")
    if group_size < 1 or rewards.shape[0] % group_size != 0:
        raise ValueError(f"batch of {rewards.shape[0]} rewards does not split into groups of {group_size}")
    if not rewards.is_floating_point():
        rewards = rewards.float()
    return rewards.view(-1, group_size)


def zero_spread_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(B,) -> (n_groups,) bool: True where all G rewards of the group are equal.

    Such a group has zero advantage and gives no gradient; DAPO's dynamic sampling drops and refills them.
    """
    grouped = _grouped(rewards, group_size)
    return grouped.amax(-1) == grouped.amin(-1)


def group_advantages(rewards: Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO outcome advantage (DeepSeekMath §4.1.2): (r − group mean) / (group std + eps); (B,) -> (B,).

    scale_by_std=False keeps only r − mean (Dr. GRPO: the std division over-weights groups that
    are nearly all right or all wrong). A group whose rewards are all equal gives exactly 0.
    """
    grouped = _grouped(rewards, group_size)
    adv = grouped - grouped.mean(-1, keepdim=True)
    if scale_by_std:
        # sample std; written out so that G = 1 gives 0 instead of torch.std's NaN and warning
        var = adv.pow(2).sum(-1, keepdim=True) / max(group_size - 1, 1)
        adv = adv / (var.sqrt() + eps)
    # the mean of equal floats can round away from them; make "no signal" exactly zero
    adv = torch.where(zero_spread_groups(rewards, group_size)[:, None], 0.0, adv)
    return adv.reshape(-1)


def process_advantages(
    step_rewards: list[list[float]], step_ends: list[list[int]], group_size: int, num_tokens: int, *, eps: float = 1e-6
) -> Tensor:
    """GRPO with process supervision (DeepSeekMath §4.1.3) -> (B, T = num_tokens).

    step_rewards[i][j] is the reward of reasoning step j of completion i, and step_ends[i][j] the
    column (token position) where that step ends. Each reward is normalised by the mean and sample
    std of *all* step rewards of the group; a token's advantage is the sum of the normalised rewards
    of the steps that end at or after it. Tokens after the last step get 0; apply your mask.
    """
    if group_size < 1 or len(step_rewards) != len(step_ends) or len(step_rewards) % group_size != 0:
        raise ValueError(f"need as many step_ends as step_rewards ({len(step_ends)} vs {len(step_rewards)}), "
                         f"in groups of {group_size}")
    for i, (rewards, ends) in enumerate(zip(step_rewards, step_ends)):
        if len(rewards) != len(ends) or any(not 0 <= end < num_tokens for end in ends):
            raise ValueError(f"completion {i}: {len(rewards)} step rewards need as many step ends "
                             f"in 0..{num_tokens - 1}, got {ends}")
    adv = torch.zeros(len(step_rewards), num_tokens)
    for start in range(0, len(step_rewards), group_size):
        rows = range(start, start + group_size)
        pooled = torch.tensor([r for i in rows for r in step_rewards[i]], dtype=torch.float32)
        if pooled.numel() == 0 or bool((pooled == pooled[0]).all()):
            continue  # no steps, or no spread: no signal
        mean, std = pooled.mean(), pooled.std()
        for i in rows:
            for reward, end in zip(step_rewards[i], step_ends[i]):
                adv[i, : end + 1] += (reward - mean) / (std + eps)
    return adv


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv 1506.02438); (B, T) each.

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t),  A_t = Σ_l (γλ)^l δ_{t+l},  returns R_t = A_t + V(s_t).
    Steps are the masked-in tokens of each row, in order: V after a row's last token is 0 (the
    episode ends), and masked positions (padding, or a hole such as tool output) are skipped, so
    rows of different lengths are fine. Rewards and values at masked positions are ignored; both
    outputs are 0 there and carry no gradient (they are targets).
    """
    if rewards.dim() != 2 or not rewards.shape == values.shape == mask.shape:
        raise ValueError(f"rewards, values and mask must all be (B, T), got "
                         f"{tuple(rewards.shape)}, {tuple(values.shape)}, {tuple(mask.shape)}")
    m = mask.bool()
    rewards = torch.where(m, rewards, 0.0)
    values = torch.where(m, values, 0.0)
    next_value = torch.zeros_like(values[:, 0])  # (B,): V(s_{t+1}) of the next masked-in token
    next_adv = torch.zeros_like(values[:, 0])    # (B,): A_{t+1} of the next masked-in token
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):  # reverse recursion A_t = δ_t + γλ·A_{t+1}, vectorised over B
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * next_adv
        valid = m[:, t]
        advantages[:, t] = torch.where(valid, adv_t, 0.0)
        next_value = torch.where(valid, values[:, t], next_value)
        next_adv = torch.where(valid, adv_t, next_adv)
    returns = torch.where(m, advantages + values, 0.0)
    return advantages, returns


def whiten(values: Tensor, mask: Tensor, *, shift_mean: bool = True, eps: float = 1e-8,
           sum_over: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Normalise (B, T) to mean 0, variance 1 over the masked-in entries only; masked positions 0.

    Uses the sample variance (n − 1), like group_advantages. shift_mean=False only rescales
    (x / std), keeping each value's sign, e.g. to whiten rewards without making any of them negative.
    ``sum_over``: sums a tensor over the parts of one batch held by several processes (torchrun), so that mean and
    variance are those of the whole batch; None for a batch held whole.
    """
    if values.dim() != 2 or values.shape != mask.shape:
        raise ValueError(f"values must be (B, T) like mask {tuple(mask.shape)}, got {tuple(values.shape)}")
    total = sum_over or (lambda x: x)
    m = mask.bool()
    values = torch.where(m, values, 0.0)  # NaN padding would give NaN gradients through (x − mean)²
    n = total(m.sum().double())
    mean = (total(values.sum().double()) / n.clamp(min=1)).to(values.dtype)
    squares = total(torch.where(m, (values - mean) ** 2, 0.0).sum().double())
    var = (squares / (n - 1).clamp(min=1)).to(values.dtype)
    out = values - mean if shift_mean else values
    return torch.where(m, out * torch.rsqrt(var + eps), 0.0)


# --- PPO: per-token rewards with the KL penalty inside, then GAE -----------------------------------------------

def token_rewards(outcome: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """Per-token PPO rewards (B, T): −β·KL_t on every completion token, plus the outcome r_φ(q, o) (B,) on each
    row's last completion token (the last masked-in one). Masked positions are 0; a row with no tokens gets nothing.
    """
    if mask.dim() != 2 or outcome.shape != mask.shape[:1]:
        raise ValueError(f"outcome must be (B,) for mask (B, T) {tuple(mask.shape)}, got {tuple(outcome.shape)}")
    m = mask.bool()
    rewards = torch.zeros(m.shape, dtype=torch.float32, device=mask.device)
    if kl_coef != 0:
        if kl is None or kl.shape != mask.shape:
            raise ValueError(f"kl_coef={kl_coef} needs kl (B, T) like mask {tuple(mask.shape)}")
        rewards = rewards - kl_coef * torch.where(m, kl.float(), 0.0)
    has_tokens = m.any(-1)
    last = m.shape[1] - 1 - m.flip(-1).int().argmax(-1)  # argmax finds the first 1 of the flipped row
    rows = torch.arange(m.shape[0], device=mask.device)[has_tokens]
    rewards[rows, last[has_tokens]] += outcome[has_tokens].float().to(mask.device)
    return torch.where(m, rewards, 0.0)


def ppo_advantages(outcome: Tensor, values: Tensor, mask: Tensor, *, kl: Tensor | None = None, kl_coef: float = 0.0,
                   gamma: float = 1.0, lam: float = 0.95, whiten_rewards: bool = False,
                   whiten_advantages: bool = True,
                   sum_over: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Rollout rewards and values -> (advantages, returns, token rewards), each (B, T), masked positions 0.
    ``sum_over``: as in ``whiten``, for a rollout split over processes.

    Returns are R_t = A_t + V(s_t) before advantage whitening (the critic's target). With γ = λ = 1, V ≡ 0, β = 0
    and no whitening, A_t = R_t = the outcome on every token of the completion: REINFORCE.
    """
    rewards = token_rewards(outcome, mask, kl, kl_coef)
    if whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False, sum_over=sum_over)
    advantages, returns = gae(rewards, values.detach().float(), mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask, sum_over=sum_over)
    return advantages, returns, rewards


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n: int) -> float:
    """Ziegler et al. 2019 §2.2: e = clip(KL / target − 1, −0.2, 0.2); β ← β·(1 + e·n / horizon), n = completions."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n / horizon)
