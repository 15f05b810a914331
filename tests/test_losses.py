"""Losses against hand-computed numbers (arithmetic in the comments), gradients by autograd."""

import math

import pytest
import torch

from r1lab.losses import (
    aggregate,
    bradley_terry_loss,
    dpo_loss,
    grpo_loss,
    kl_penalty,
    ppo_policy_loss,
    sft_loss,
    value_loss,
)

NAN = float("nan")
E_HALF = math.exp(0.5)  # 1.648721
E_MHALF = math.exp(-0.5)  # 0.606531


def close(actual, expected, atol=1e-5):
    actual = torch.as_tensor(actual)
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


# --- aggregate ------------------------------------------------------------------------------

# rows of lengths 3, 1 and 0; padding holds NaN, which must never be read
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0, NAN], [6.0, NAN, NAN, NAN], [NAN, NAN, NAN, NAN]])
MASK = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


@pytest.mark.parametrize(
    "mode, max_len, expected",
    [
        ("sequence", None, 4.0),  # row means (1+2+3)/3 = 2 and 6/1 = 6; the empty row is left out -> (2+6)/2 = 4
        ("token", None, 3.0),  # (1+2+3+6) / 4 tokens = 3
        ("constant", None, 1.0),  # 12 / (B·T = 3·4) = 1
        ("constant", 6, 2 / 3),  # 12 / (3·6) = 0.6667
    ],
)
def test_aggregate_modes(mode, max_len, expected):
    close(aggregate(PER_TOKEN, MASK, mode, max_len=max_len), expected)


@pytest.mark.parametrize("mode", ["sequence", "token", "constant"])
def test_aggregate_no_tokens_is_zero_not_nan(mode):
    x = torch.full((2, 3), NAN, requires_grad=True)
    out = aggregate(x, torch.zeros(2, 3), mode)
    out.backward()
    assert out.item() == 0.0 and torch.equal(x.grad, torch.zeros(2, 3))


def test_aggregate_errors():
    with pytest.raises(ValueError, match="'mean'.*sequence"):
        aggregate(PER_TOKEN, MASK, "mean")
    with pytest.raises(ValueError, match="max_len"):
        aggregate(PER_TOKEN, MASK, "constant", max_len=0)
    with pytest.raises(ValueError, match="like mask"):
        aggregate(PER_TOKEN[:, :3], MASK, "token")


# --- KL estimators --------------------------------------------------------------------------

THETA = torch.tensor([[-1.0, -2.0, -0.5]])
REF = torch.tensor([[-1.5, -2.0, 0.0]])  # θ - ref = [0.5, 0, -0.5]


def test_kl_estimators_hand_values():
    close(kl_penalty(THETA, REF, "k1"), [[0.5, 0.0, -0.5]])
    close(kl_penalty(THETA, REF, "k2"), [[0.125, 0.0, 0.125]])  # ½·0.5² = 0.125
    # k3 with x = ref - θ = [-0.5, 0, 0.5]: e^x - x - 1
    #   e^-0.5 + 0.5 - 1 = 0.606531 - 0.5 = 0.106531;  0;  e^0.5 - 0.5 - 1 = 0.148721
    close(kl_penalty(THETA, REF), [[0.106531, 0.0, 0.148721]])


def test_k3_nonnegative_and_finite():
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(64, 32, generator=g)
    for scale in (1.0, 1e-3, 1e-7):  # tiny differences: exp(x) - x - 1 would cancel to negatives
        assert (kl_penalty(theta, theta + scale * torch.randn(64, 32, generator=g)) >= 0).all()
    # log-ratio 100 is clamped to 20 before exp: e^20 - 20 - 1 = 485165174.4 instead of e^100 (inf in fp16/bf16)
    far = kl_penalty(torch.tensor([0.0, -math.inf]), torch.tensor([100.0, 0.0]))
    close(far, [math.exp(20) - 21, math.exp(20) - 21], atol=100.0)


def test_kl_errors():
    with pytest.raises(ValueError, match="'k4'.*k1.*k2.*k3"):
        kl_penalty(THETA, REF, "k4")
    with pytest.raises(ValueError):
        kl_penalty(THETA, REF[:, :2])


# --- GRPO clipped surrogate ----------------------------------------------------------------

def _clip_case():
    # log ρ = [0.5, -0.5, 0.5, -0.5] -> ρ = [1.648721, 0.606531, 1.648721, 0.606531]; A = [1, 1, -1, -1]; ε = 0.2
    # t0: A>0, ρ = 1.6487 > 1.2 -> min(1.6487, 1.2) = 1.2           clipped (no gradient)
    # t1: A>0, ρ = 0.6065 < 0.8 -> min(0.6065, 0.8) = 0.6065        not clipped (pessimistic bound)
    # t2: A<0, ρ = 1.6487 -> min(-1.6487, -1.2) = -1.6487           not clipped
    # t3: A<0, ρ = 0.6065 < 0.8 -> min(-0.6065, -0.8) = -0.8        clipped (no gradient)
    # token mean = (1.2 + 0.606531 - 1.648721 - 0.8) / 4 = -0.642190 / 4 = -0.160548 -> loss 0.160548
    logprobs = torch.tensor([[-1.0, -2.0, -1.0, -2.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.5, -1.5, -1.5]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    return logprobs, old, advantages, torch.ones(1, 4)


def test_grpo_clipping_both_sides():
    logprobs, old, advantages, mask = _clip_case()
    loss, stats = grpo_loss(logprobs, old, None, advantages, mask, clip_eps=0.2)
    close(loss, 0.160548)
    loss.backward()
    # d loss / d logπ_t = -ρ_t·A_t / 4 where unclipped: t1 -0.606531/4 = -0.151633, t2 +1.648721/4 = 0.412180
    close(logprobs.grad, [[0.0, -0.151633, 0.412180, 0.0]])
    assert stats["clip_frac"] == 0.5  # t0 and t3
    close(stats["ratio_mean"], (2 * E_HALF + 2 * E_MHALF) / 4)  # 1.127626
    close(stats["ratio_max"], E_HALF)
    assert stats["kl"] == 0.0
    assert all(type(v) is float for v in stats.values())


def test_clip_higher_is_asymmetric():
    # ρ = [1.25, 0.75], A = [1, -1]
    # ε_high = 0.2:  t0 min(1.25, 1.2) = 1.2 (clipped), t1 min(-0.75, -0.8) = -0.8 (clipped) -> mean 0.2, loss -0.2
    # ε_high = 0.28: t0 min(1.25, 1.25) = 1.25 (free), t1 unchanged -0.8       -> mean 0.225, loss -0.225
    logprobs = torch.tensor([[math.log(1.25), math.log(0.75)]])
    old, adv, mask = torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2)
    loss, stats = grpo_loss(logprobs, old, None, adv, mask, clip_eps=0.2)
    close(loss, -0.2)
    assert stats["clip_frac"] == 1.0
    loss, stats = grpo_loss(logprobs, old, None, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    close(loss, -0.225)
    assert stats["clip_frac"] == 0.5



# Log ratios far outside any real policy change (a broken sampler, garbage logprobs): exp(100) overflows fp32.
# log ρ = ±100 is clamped to ±20 before exp, so ρ = e^20 = 4.85e8 or e^-20 = 2.06e-9, ε = 0.2:
#   +100, A = +1: min(4.85e8, 1.2) = 1.2           clipped term, no gradient
#   +100, A = -1: min(-4.85e8, -1.2) = -4.85e8     large but finite; the clamp is flat there, gradient 0
#   -100, A = +1: min(2.06e-9, 0.8) = 2.06e-9      gradient 0 (flat clamp)
#   -100, A = -1: min(-2.06e-9, -0.8) = -0.8       clipped term, no gradient
# Before the clamp: ρ = inf, an infinite loss for A < 0, and inf · 0 = NaN in the gradient even for A > 0.
@pytest.mark.parametrize("log_ratio", [100.0, -100.0])
@pytest.mark.parametrize("advantage", [1.0, -1.0])
@pytest.mark.parametrize("loss_fn", ["grpo", "ppo"])
def test_extreme_log_ratio_gives_finite_loss_and_gradient(log_ratio, advantage, loss_fn):
    logprobs = torch.tensor([[log_ratio - 1.0, -1.0]], requires_grad=True)  # the second token: ρ = 1
    old = torch.tensor([[-1.0, -1.0]])
    advantages = torch.full((1, 2), advantage)
    if loss_fn == "grpo":
        loss, stats = grpo_loss(logprobs, old, None, advantages, torch.ones(1, 2), clip_eps=0.2)
    else:
        loss, stats = ppo_policy_loss(logprobs, old, advantages, torch.ones(1, 2), clip_eps=0.2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert all(math.isfinite(v) for v in stats.values())
    rho = math.exp(20.0 if log_ratio > 0 else -20.0)
    low, high = 0.8, 1.2
    first = min(rho * advantage, min(max(rho, low), high) * advantage)
    # token mean of the two tokens; the second (ρ = 1, never clipped) has gradient -A/2
    close(loss, -(first + advantage) / 2, atol=max(1e-5, abs(first) * 1e-6))
    close(logprobs.grad, [[0.0, -advantage / 2]])


def _unclamped_grpo_loss(logprobs, old, advantages, mask, eps, agg):
    """The surrogate as it was before the log-ratio clamp: exp of the raw log ratio."""
    ratio = torch.exp(logprobs - old.detach())
    objective = torch.minimum(ratio * advantages, ratio.clamp(1 - eps, 1 + eps) * advantages)
    return -aggregate(objective, mask, agg)


@pytest.mark.parametrize("agg", ["token", "sequence", "constant"])
def test_clamp_leaves_in_range_ratios_bit_identical(agg):
    # Training must give bit-identical weights with and without the clamp wherever |log ρ| <= 20.
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(4, 6, generator=gen) * 5
    log_ratio = torch.randn(4, 6, generator=gen) * 3  # up to ~±10, plus the bound itself
    log_ratio[0, 0], log_ratio[0, 1] = 20.0, -20.0
    advantages = torch.randn(4, 6, generator=gen)
    mask = torch.ones(4, 6)
    new_lp = (old + log_ratio).requires_grad_()
    ref_lp = (old + log_ratio).requires_grad_()
    loss, _ = grpo_loss(new_lp, old, None, advantages, mask, clip_eps=0.2, agg=agg)
    expected = _unclamped_grpo_loss(ref_lp, old, advantages, mask, 0.2, agg)
    loss.backward()
    expected.backward()
    assert torch.equal(loss, expected)
    assert torch.equal(new_lp.grad, ref_lp.grad)


# μ = 1: old = logprobs.detach(), ρ = 1 in value, gradient = -A ∇logπ times the aggregation weight.
# rows of lengths 3 and 2 (padding holds -inf), A = [2, -1]; objective per token = A.
@pytest.mark.parametrize(
    "agg, max_len, expected_loss, grad_row0, grad_row1",
    [
        # token: sum = 3·2 + 2·(-1) = 4 over 5 tokens -> loss -0.8; grad -A/5 = -0.4 and +0.2
        ("token", None, -0.8, -0.4, 0.2),
        # sequence: row means 2 and -1 -> mean 0.5 -> loss -0.5; grad -A/(|o_i|·2) = -2/6 = -0.333333 and 1/4
        ("sequence", None, -0.5, -1 / 3, 0.25),
        # constant, max_len 4: 4 / (2·4) = 0.5 -> loss -0.5; grad -A/8 = -0.25 and 0.125
        ("constant", 4, -0.5, -0.25, 0.125),
    ],
)
def test_mu_one_gradient_is_policy_gradient(agg, max_len, expected_loss, grad_row0, grad_row1):
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    for detach_old in (True, False):  # π_old is detached inside, so passing logprobs itself is the same
        logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -math.inf]], requires_grad=True)
        old = logprobs.detach() if detach_old else logprobs
        loss, stats = grpo_loss(logprobs, old, None, torch.tensor([2.0, -1.0]), mask, agg=agg, max_len=max_len)
        loss.backward()
        close(loss, expected_loss)
        close(logprobs.grad, [[grad_row0] * 3, [grad_row1, grad_row1, 0.0]])
        assert stats["clip_frac"] == 0.0 and stats["ratio_mean"] == 1.0 and stats["ratio_max"] == 1.0


def test_kl_term_value_and_gradient():
    # A = 0, so only -β·KL remains; θ = [0, 0], ref = [ln 2, 0], β = 0.1, token mean over 2 tokens
    # k3: t0 e^{ln 2} - ln 2 - 1 = 2 - 0.693147 - 1 = 0.306853; t1 0 -> mean 0.153426; loss = +β·mean = 0.0153426
    # d k3 / dθ = 1 - π_ref/π_θ = 1 - 2 = -1 at t0 -> d loss = β·(-1)/2 = -0.05 (GRPO's coefficient β(π_ref/π_θ - 1))
    logprobs = torch.zeros(1, 2, requires_grad=True)
    ref = torch.tensor([[math.log(2.0), 0.0]])
    loss, stats = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1), torch.ones(1, 2), kl_coef=0.1)
    loss.backward()
    close(loss, 0.0153426)
    close(logprobs.grad, [[-0.05, 0.0]])
    close(stats["kl"], 0.153426)
    # k1: d(θ - ref)/dθ = 1 -> d loss = β/2 = 0.05 on both tokens
    logprobs.grad = None
    loss, _ = grpo_loss(logprobs, logprobs.detach(), ref, torch.zeros(1), torch.ones(1, 2), kl_coef=0.1,
                        kl_estimator="k1")
    loss.backward()
    close(logprobs.grad, [[0.05, 0.05]])


def test_kl_reported_but_not_added_when_coef_zero():
    logprobs = torch.zeros(1, 2)
    ref = torch.tensor([[math.log(2.0), 0.0]])
    loss, stats = grpo_loss(logprobs, logprobs, ref, torch.zeros(1), torch.ones(1, 2))
    assert loss.item() == 0.0
    close(stats["kl"], 0.153426)


def test_grpo_errors():
    logprobs, old, advantages, mask = _clip_case()
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(logprobs, old, None, advantages, mask, kl_coef=0.04)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(logprobs, old, None, torch.ones(3), mask)
    with pytest.raises(ValueError, match="'k9'"):
        grpo_loss(logprobs, old, None, advantages, mask, kl_estimator="k9")
    with pytest.raises(ValueError, match="aggregation"):
        grpo_loss(logprobs, old, None, advantages, mask, agg="sum")
    with pytest.raises(ValueError, match="like mask"):
        grpo_loss(logprobs, old[:, :2], None, advantages, mask)


# --- PPO ------------------------------------------------------------------------------------

def test_ppo_policy_loss_is_the_same_surrogate():
    logprobs, old, advantages, mask = _clip_case()
    loss, stats = ppo_policy_loss(logprobs, old, advantages, mask)
    close(loss, 0.160548)  # the clipping case above
    assert stats["clip_frac"] == 0.5 and "kl" not in stats
    with pytest.raises(ValueError, match="per token"):
        ppo_policy_loss(logprobs, old, torch.ones(1), mask)


def test_value_loss_clipping():
    # ε_v = 0.2
    # t0: V_old 0, V 0.5, R 1: clip(V) = 0.2; (0.5-1)² = 0.25 < (0.2-1)² = 0.64 -> 0.5·0.64 = 0.32  clipped, no grad
    # t1: V_old 0, V 0.5, R 0: (0.5)² = 0.25 > (0.2)² = 0.04 -> 0.5·0.25 = 0.125                    grad (V-R)/3
    # t2: V_old 1, V 1.1, R 2: inside the band, both (−0.9)² = 0.81 -> 0.405                         grad (V-R)/3
    # token mean = (0.32 + 0.125 + 0.405) / 3 = 0.283333
    values = torch.tensor([[0.5, 0.5, 1.1, NAN]], requires_grad=True)
    old = torch.tensor([[0.0, 0.0, 1.0, NAN]])
    returns = torch.tensor([[1.0, 0.0, 2.0, NAN]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_eps_value=0.2)
    loss.backward()
    close(loss, 0.283333)
    close(values.grad, [[0.0, 0.5 / 3, -0.9 / 3, 0.0]])
    close(stats["value_clip_frac"], 1 / 3)
    # R = [1, 0, 2]: mean 1, Var = (0 + 1 + 1)/3 = 0.666667
    # R - V = [0.5, -0.5, 0.9]: mean 0.3, Var = (0.04 + 0.64 + 0.36)/3 = 0.346667 -> EV = 1 - 0.52 = 0.48
    close(stats["explained_variance"], 0.48)


def test_value_loss_constant_returns():
    _, stats = value_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), torch.ones(1, 2))
    assert stats["explained_variance"] == 0.0  # Var(R) = 0: undefined, reported as 0
    with pytest.raises(ValueError):
        value_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.ones(1, 2), torch.ones(1, 2))


# --- SFT, reward model, DPO -----------------------------------------------------------------

def test_sft_loss():
    # masked-in logprobs -1, -2, -3 -> mean NLL (1 + 2 + 3)/3 = 2
    logprobs = torch.tensor([[-1.0, -2.0, NAN], [-3.0, -math.inf, NAN]])
    close(sft_loss(logprobs, torch.tensor([[1, 1, 0], [1, 0, 0]])), 2.0)


def test_bradley_terry():
    # diffs c - r = [2-1, 0.5-1] = [1, -0.5]
    # -log σ(1) = log(1 + e^-1) = 0.313262;  -log σ(-0.5) = log(1 + e^0.5) = 0.974077;  mean 0.643670
    loss, stats = bradley_terry_loss(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]))
    close(loss, 0.643670)
    assert stats == {"accuracy": 0.5, "margin": 0.25}
    with pytest.raises(ValueError):
        bradley_terry_loss(torch.zeros(2), torch.zeros(3))


def test_dpo():
    # β = 0.1; implicit rewards β(log π - log ref):
    #   chosen   0.1·(-10 + 11) = 0.1,   0.1·(-20 + 20) = 0
    #   rejected 0.1·(-12 + 11) = -0.1,  0.1·(-19 + 20) = 0.1
    #   margins [0.2, -0.1]: log(1 + e^-0.2) = 0.598139, log(1 + e^0.1) = 0.744397 -> mean 0.671268
    policy_chosen = torch.tensor([-10.0, -20.0], requires_grad=True)
    loss, stats = dpo_loss(policy_chosen, torch.tensor([-12.0, -19.0]), torch.tensor([-11.0, -20.0]),
                           torch.tensor([-11.0, -20.0]), beta=0.1)
    close(loss, 0.671268)
    close(stats["reward_margin"], 0.05)
    assert stats["reward_accuracy"] == 0.5
    # d loss / d log π_c = -β·σ(-margin) / B: -0.1·σ(-0.2)/2 = -0.1·0.450166/2 = -0.022508; -0.1·σ(0.1)/2 = -0.026249
    loss.backward()
    close(policy_chosen.grad, [-0.022508, -0.026249])
    with pytest.raises(ValueError):
        dpo_loss(torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2, 1))


@pytest.mark.parametrize("agg", ["sequence", "token", "constant"])
def test_garbage_in_padding_never_reaches_loss_or_gradient(agg):
    # padding of every input holds NaN or -inf: loss and gradient must stay finite, gradient 0 there
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    logprobs = torch.tensor([[-1.0, -2.0, NAN], [-0.5, -math.inf, NAN]], requires_grad=True)
    old = torch.tensor([[-1.2, -1.8, -math.inf], [-0.4, NAN, NAN]])
    ref = torch.tensor([[-1.1, -2.2, -math.inf], [-0.6, -math.inf, NAN]])
    advantages = torch.tensor([[1.0, -1.0, NAN], [0.5, math.inf, NAN]])
    loss, stats = grpo_loss(logprobs, old, ref, advantages, mask, kl_coef=0.1, agg=agg)
    loss.backward()
    assert math.isfinite(loss.item()) and all(math.isfinite(v) for v in stats.values())
    assert torch.isfinite(logprobs.grad).all()
    assert (logprobs.grad[~mask.bool()] == 0).all()
