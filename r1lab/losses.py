"""Losses for R1-style training: GRPO, PPO (policy and value), SFT, reward model, DPO.

All functions are pure functions of tensors. Sources: PPO, Schulman et al. arXiv 1707.06347; GRPO and the k3 KL
estimator, DeepSeekMath arXiv 2402.03300 §4.1; the GRPO variants DAPO arXiv 2503.14476 and Dr. GRPO arXiv 2503.20783.
Shapes: B sequences, T token positions. Logprobs are per token, (B, T): log π(o_t | q, o_<t).
``mask`` (B, T), float or bool, is 1 on completion tokens and 0 on prompt and padding. Entries at
masked positions are never read: they are replaced by 0 (``torch.where``) before any arithmetic,
because 0 · NaN = NaN, in the value and in the gradient that reaches the model. So padding may
hold anything, even -inf or NaN.

Loss functions return ``(loss, stats)``: a scalar to minimise and a dict of python floats
computed without grad, for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("sequence", "token", "constant")

# A log-ratio beyond ±20 (probability ratio 5e8) is never a real policy difference, only padding
# garbage or a broken sampler; exp() overflows fp32/bf16 near 88, so the k3 KL and the PPO/GRPO ratio clamp the
# log-ratio to this bound before exp to stay finite.
_MAX_LOG_RATIO = 20.0


def _check_like(name: str, x: Tensor, mask: Tensor) -> None:
    if x.dim() != 2 or x.shape != mask.shape:
        raise ValueError(f"{name} must be (B, T) like mask {tuple(mask.shape)}, got {tuple(x.shape)}")


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is true; 0 when there are none."""
    m = mask.bool()
    return torch.where(m, x, 0).sum() / m.sum().clamp(min=1)


def _fill_padding(x: Tensor, mask: Tensor) -> Tensor:
    """x with masked-out entries replaced by 0; their gradient is then exactly 0, never NaN."""
    return torch.where(mask.bool(), x, 0)


def _masked_var(x: Tensor, mask: Tensor) -> Tensor:
    """Population variance of ``x`` over the masked-in entries."""
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask)


def aggregate(per_token: Tensor, mask: Tensor, mode: str, *, max_len: int | None = None) -> Tensor:
    """Reduce a per-token quantity (B, T) to a scalar; this choice is where GRPO variants differ.

    - "sequence": mean over each sequence's tokens, then mean over sequences (GRPO as printed,
      DeepSeekMath eq. 3; biased toward long wrong answers). Rows with no tokens are left out.
    - "token": sum over all tokens of the batch / number of tokens (DAPO).
    - "constant": sum / (B × max_len) (Dr. GRPO); pass the generation budget as ``max_len`` so the
      normaliser does not move with the longest completion of the batch. Defaults to T.
    With no tokens at all every mode returns 0 (still attached to the graph), never NaN.
    """
    _check_like("per_token", per_token, mask)
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation mode {mode!r}; choose one of {AGGREGATIONS}")
    m = mask.bool()
    x = torch.where(m, per_token, 0)
    if mode == "sequence":
        lengths = m.sum(-1)  # (B,)
        per_seq = x.sum(-1) / lengths.clamp(min=1)
        return per_seq.sum() / (lengths > 0).sum().clamp(min=1)
    if mode == "token":
        return x.sum() / m.sum().clamp(min=1)
    max_len = per_token.shape[1] if max_len is None else max_len
    if max_len <= 0:
        raise ValueError(f"max_len must be positive, got {max_len}")
    return x.sum() / (per_token.shape[0] * max_len)


def kl_penalty(logprobs: Tensor, ref_logprobs: Tensor, estimator: str = "k3") -> Tensor:
    """Per-token sample estimate of KL(π_θ ‖ π_ref) for tokens drawn from π_θ; (B, T) -> (B, T).

    k1 = log π_θ − log π_ref                      unbiased, can be negative, high variance
    k2 = ½ (log π_θ − log π_ref)²                  biased, ≥ 0, low variance
    k3 = π_ref/π_θ − log(π_ref/π_θ) − 1            unbiased, ≥ 0 (GRPO, DeepSeekMath eq. 4)
    (Schulman, "Approximating KL divergence", 2020.)
    """
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)} and ref_logprobs {tuple(ref_logprobs.shape)} differ")
    if estimator == "k1":
        return logprobs - ref_logprobs
    if estimator == "k2":
        return 0.5 * (logprobs - ref_logprobs) ** 2
    if estimator == "k3":
        log_ratio = (ref_logprobs - logprobs).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        # expm1(x) − x rather than exp(x) − x − 1: no cancellation near x = 0, so the result stays ≥ 0
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; choose one of {KL_ESTIMATORS}")


def _clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, clip_low: float, clip_high: float
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped objective per token, min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A), (B, T), and its stats."""
    m = mask.bool()
    # π_old is a constant of the objective. The clamp keeps exp() finite (fp32 overflows above ~88): without it an
    # infinite ratio gives an infinite loss for A < 0, and a NaN gradient (inf · 0) even where the clipped term wins.
    # Inside ±_MAX_LOG_RATIO clamp is the identity in value and gradient, so ordinary steps are bit-for-bit unchanged.
    log_ratio = (logprobs - old_logprobs.detach()).clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_low, 1 + clip_high) * advantages
    objective = torch.minimum(unclipped, clipped)
    with torch.no_grad():
        stats = {
            # clipping changed the objective only where the clipped term won strictly
            "clip_frac": masked_mean((clipped < unclipped).float(), m).item(),
            "ratio_mean": masked_mean(ratio, m).item(),
            "ratio_max": ratio[m].max().item() if m.any() else 0.0,
        }
    return objective, stats


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    ref_logprobs: Tensor | None,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    agg: str = "token",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO loss (DeepSeekMath eq. 3, arXiv 2402.03300 §4.1) with the DAPO and Dr. GRPO variants as arguments.

    logprobs (B, T) under π_θ, with grad; old_logprobs (B, T) under the sampling policy π_old
    (pass ``logprobs.detach()`` for one update per rollout, μ = 1: ρ = 1 in value, and the gradient
    is the plain policy gradient); ref_logprobs (B, T) under π_ref, or None when kl_coef == 0;
    advantages (B,) broadcast over each sequence's tokens, or (B, T).
    Per token: min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A) − β·KL; loss = −aggregate(·, agg).
    clip_eps_high (default clip_eps) > clip_eps is DAPO's clip-higher (0.2 / 0.28).
    Dr. GRPO: agg="constant", kl_coef=0, advantages from group_advantages(scale_by_std=False).
    stats: "kl" (masked mean of the estimator, 0.0 without ref), "clip_frac", "ratio_mean", "ratio_max".
    """
    _check_like("logprobs", logprobs, mask)
    _check_like("old_logprobs", old_logprobs, mask)
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"unknown KL estimator {kl_estimator!r}; choose one of {KL_ESTIMATORS}")
    if kl_coef != 0 and ref_logprobs is None:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logprobs")
    if advantages.dim() == 1 and advantages.shape[0] == logprobs.shape[0]:
        advantages = advantages[:, None]  # one outcome advantage for every token of o_i
    elif advantages.shape != logprobs.shape:
        raise ValueError(f"advantages must be (B,) or (B, T) for logprobs {tuple(logprobs.shape)}, "
                         f"got {tuple(advantages.shape)}")
    # advantages are constants of the surrogate: no gradient may flow into a critic through them
    advantages = _fill_padding(advantages.detach(), mask)
    logprobs, old_logprobs = _fill_padding(logprobs, mask), _fill_padding(old_logprobs, mask)
    high = clip_eps if clip_eps_high is None else clip_eps_high
    objective, stats = _clipped_surrogate(logprobs, old_logprobs, advantages, mask, clip_eps, high)

    kl_stat = 0.0
    if ref_logprobs is not None:
        _check_like("ref_logprobs", ref_logprobs, mask)
        kl = kl_penalty(logprobs, _fill_padding(ref_logprobs.detach(), mask), kl_estimator)
        if kl_coef != 0:
            objective = objective - kl_coef * kl
        kl_stat = masked_mean(kl.detach(), mask).item()
    loss = -aggregate(objective, mask, agg, max_len=max_len)
    return loss, {"kl": kl_stat, **stats}


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    agg: str = "token",
    max_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped policy loss (Schulman et al., arXiv 1707.06347 eq. 7): −aggregate(min(ρA, clip(ρ, 1±ε)A)).

    advantages (B, T), per token (from ``gae``). No KL term: PPO puts −β·KL into the reward.
    stats: "clip_frac", "ratio_mean", "ratio_max".
    """
    if advantages.shape != logprobs.shape:
        raise ValueError(f"PPO advantages must be per token {tuple(logprobs.shape)}, got {tuple(advantages.shape)}")
    loss, stats = grpo_loss(logprobs, old_logprobs, None, advantages, mask, clip_eps=clip_eps,
                            clip_eps_high=clip_eps_high, kl_coef=0.0, agg=agg, max_len=max_len)
    del stats["kl"]
    return loss, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip_eps_value: float = 0.2,
    agg: str = "token",
) -> tuple[Tensor, dict[str, float]]:
    """Clipped critic loss: 0.5·max((V − R)², (clip(V, V_old − ε_v, V_old + ε_v) − R)²).

    Value clipping comes from common PPO implementations; the PPO paper's value loss is unclipped.
    values (B, T) with grad; old_values (B, T) from the rollout; returns (B, T) from ``gae``.
    stats: "value_clip_frac" (share of tokens where the clipped error was the larger one),
    "explained_variance" (1 − Var(R − V)/Var(R) over masked tokens; 0.0 when Var(R) = 0).
    """
    for name, x in (("values", values), ("old_values", old_values), ("returns", returns)):
        _check_like(name, x, mask)
    values = _fill_padding(values, mask)
    old_values, returns = _fill_padding(old_values.detach(), mask), _fill_padding(returns.detach(), mask)
    clipped_values = torch.clamp(values, old_values - clip_eps_value, old_values + clip_eps_value)
    err_unclipped = (values - returns) ** 2
    err_clipped = (clipped_values - returns) ** 2
    loss = aggregate(0.5 * torch.maximum(err_unclipped, err_clipped), mask, agg)
    with torch.no_grad():
        var_returns = _masked_var(returns, mask).item()
        explained = 1.0 - _masked_var(returns - values, mask).item() / var_returns if var_returns > 0 else 0.0
        stats = {
            "value_clip_frac": masked_mean((err_clipped > err_unclipped).float(), mask).item(),
            "explained_variance": explained,
        }
    return loss, stats


def sft_loss(logprobs: Tensor, mask: Tensor) -> Tensor:
    """Negative log-likelihood averaged over all masked-in tokens of the batch (token aggregation)."""
    return -aggregate(logprobs, mask, "token")


def _check_pairs(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or next(iter(tensors.values())).dim() != 1:
        raise ValueError(f"expected 1-D tensors of equal length (B,), got {shapes}")


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Reward-model pairwise loss −log σ(s_chosen − s_rejected), mean over B pairs; scores (B,).

    stats: "accuracy" (share of pairs with s_chosen > s_rejected), "margin" (mean s_chosen − s_rejected).
    """
    _check_pairs(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    diff = chosen_scores - rejected_scores
    loss = -F.logsigmoid(diff).mean()
    with torch.no_grad():
        stats = {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item()}
    return loss, stats


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
) -> tuple[Tensor, dict[str, float]]:
    """DPO loss (Rafailov et al. 2023, eq. 7): −log σ(β[(log π_c − log ref_c) − (log π_r − log ref_r)]).

    Inputs are sequence log-probs (B,), already summed over each completion's tokens.
    The implicit reward of a completion is β(log π − log π_ref).
    stats: "reward_accuracy" (share of pairs whose chosen reward is higher), "reward_margin" (mean difference).
    """
    _check_pairs(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                 ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps.detach())
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    margin = chosen_rewards - rejected_rewards
    loss = -F.logsigmoid(margin).mean()
    with torch.no_grad():
        stats = {"reward_accuracy": (margin > 0).float().mean().item(), "reward_margin": margin.mean().item()}
    return loss, stats
