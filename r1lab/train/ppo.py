"""PPO for language models: a critic, GAE and a per-token KL penalty in the reward (REFERENCE.md §2).

One step, top to bottom:
  1. sample ``prompts_per_step`` training problems and ``group_size`` completions each from the current policy (π_old);
  2. score every completion with the rule rewards (the outcome r_φ(q, o), weighted sum as in GRPO);
  3. per-token rewards: r_t = −β·KL_t(π_old ‖ π_ref) on every completion token, plus the outcome on the last one;
  4. values V_ψ(s_t) from the value model (``r1lab.value_model``), GAE advantages and returns
     (``r1lab.advantages.gae``), advantages whitened over the rollout;
  5. ``updates_per_rollout`` epochs over the rollout in ``minibatches``, each minimising the clipped policy loss
     (``r1lab.losses.ppo_policy_loss``) plus ``value_coef`` × the clipped value loss (``r1lab.losses.value_loss``);
  6. with ``target_kl`` set, adapt β toward the target (Ziegler et al. 2019, arXiv 1909.08593);
  7. log GRPO's metrics plus value loss, explained variance, value clip fraction, KL, β and the returns.

Deviations from the papers (DeepSeekMath §2/§4; InstructGPT; Ziegler et al.), on purpose:
  - The critic starts from the policy checkpoint (a base transformer plus a new small head), not from a reward model:
    R1-Zero's rewards are rules, so there is no reward model. ``value_init`` takes one when it exists.
  - ``group_size`` completions per problem (classic PPO samples one) so that GRPO and PPO can be compared on exactly the
    same sampled completions; the critic ignores the grouping.
  - A completion cut at ``max_new_tokens`` is treated as an ended episode (V after its last token = 0) rather than
    bootstrapped from V(s_T); the rule rewards already score it as a finished (usually wrong) answer.
  - Old logprobs come from the training forward pass, not from the sampler (as in GRPO; equal up to top-p/top-k).
  - One AdamW over policy and critic with separate learning rates and one gradient-norm clip over both, as in the PPO
    paper's combined objective L^CLIP − c₁·L^VF; no entropy bonus.
  - Advantages are whitened once over the whole rollout, not per minibatch. Explained variance is measured with the
    rollout-time values, before the critic sees these returns (after the update it would be flattered).
  - The adaptive KL controller tracks the KL per completion (sum over its tokens, mean over completions) measured at
    rollout time with the chosen estimator (k1 or k3), as Ziegler et al. control the per-episode KL.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from r1lab.advantages import gae, whiten
from r1lab.checkpoint import atomic_dir, load_training_state, save_training_state, set_rng_state
from r1lab.config import doc
from r1lab.engine import SamplingParams, make_engine
from r1lab.logprobs import completion_logprobs
from r1lab.losses import kl_penalty, masked_mean, ppo_policy_loss, value_loss
from r1lab.models import load_model
from r1lab.rollout import collect_rollout, rollout_metrics, sample_lines
from r1lab.tasks import TaskConfig
from r1lab.train.grpo import lr_lambda
from r1lab.value_model import HEAD_FILE, init_value_model


@dataclass
class PPOConfig:
    kind: str = doc("ppo", "Stage kind: PPO with a value model, GAE and a per-token KL penalty in the reward.")
    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    value_init: str = doc("", "Value model start: an earlier stage's name, a value-model folder, a reward model "
                              "(HF sequence classifier) or a causal LM path (empty: the policy's start).")
    steps: int = doc(200, "RL steps (one rollout each).")
    prompts_per_step: int = doc(16, "Training problems per step.")
    group_size: int = doc(4, "Completions sampled per problem (PPO needs no groups; match GRPO to compare).")
    max_new_tokens: int = doc(64, "Longest completion; longer ones are cut and count as truncated.")
    temperature: float = doc(1.0, "Sampling temperature for rollouts.")
    top_p: float = doc(1.0, "Nucleus sampling for rollouts (1.0 keeps sampler and trainer logprobs consistent).")
    top_k: int = doc(0, "Top-k sampling for rollouts (0: off).")
    lr: float = doc(1e-4, "Peak learning rate of the policy (AdamW).")
    value_lr: float = doc(3e-4, "Peak learning rate of the value model (same schedule as the policy).")
    lr_schedule: Literal["constant", "cosine", "linear"] = doc("constant", "Decay after warmup (to 10% at the end).")
    warmup_steps: int = doc(5, "Linear learning-rate warmup steps.")
    weight_decay: float = doc(0.0, "AdamW weight decay (policy and value model).")
    max_grad_norm: float = doc(1.0, "Gradient clipping by the global norm over policy and value model (0: off).")
    updates_per_rollout: int = doc(2, "PPO epochs: passes over each rollout.")
    minibatches: int = doc(2, "Optimizer steps per pass over a rollout (near-equal splits of its completions).")
    clip_eps: float = doc(0.2, "ε: the ratio π_θ/π_old is clipped to [1 − ε, 1 + ε_high].")
    clip_eps_high: float | None = doc(None, "ε_high (clip-higher); empty: equal to clip_eps.")
    loss_aggregation: Literal["sequence", "token", "constant"] = doc(
        "token", "How per-token policy losses are averaged: token (all tokens), sequence, constant (B × max_new).")
    value_coef: float = doc(0.1, "c₁: weight of the value loss in the combined loss (acts through the shared "
                                 "gradient clip; value_lr sets the critic's step size).")
    value_clip: float = doc(0.2, "ε_v: new values are clipped to V_old ± ε_v in the value loss (reward units).")
    gamma: float = doc(1.0, "γ: discount per token in GAE.")
    lam: float = doc(0.95, "λ: GAE trade-off (1: Monte Carlo returns, 0: one-step TD).")
    kl_coef: float = doc(0.02, "β: per-token KL penalty in the reward, initial value when adaptive "
                               "(0: no reference model loaded).")
    kl_estimator: Literal["k1", "k3"] = doc("k1", "KL estimator in the reward: k1 = log π_old − log π_ref, or k3.")
    target_kl: float | None = doc(None, "Adaptive β (Ziegler et al. 2019): target KL per completion, nats summed "
                                        "over its tokens; empty: β fixed.")
    kl_horizon: int = doc(10000, "Adaptive β horizon in completions: β moves by at most ×(1 ± 0.2·n/horizon) a step.")
    whiten_rewards: bool = doc(False, "Divide per-token rewards by their std over the rollout (mean kept).")
    whiten_advantages: bool = doc(True, "Normalise advantages to mean 0, std 1 over the rollout's tokens.")
    mask_truncated: bool = doc(False, "No loss on completions cut at max_new_tokens.")
    rewards: dict[str, float] = doc({"accuracy": 1.0, "format": 0.1},
                                    "Reward name, module:function or file.py:function -> weight (the outcome score).")
    rewards_by_task: dict[str, dict[str, float]] = doc(
        {}, "Per source task (an example's 'task' field), a reward set used instead of `rewards`, e.g. "
            "{domain: {'reward_model:rm': 1.0}} (R1's all-scenario RL; 'reward_model:<stage>' names a reward_model "
            "stage of this run).")
    task: TaskConfig = doc(TaskConfig(name=""), "Training prompts from this task instead of the run's (empty name: "
                                                "the run's), e.g. a mixture of reasoning and domain prompts; "
                                                "evaluation stays on the run's task.")
    eval_every: int = doc(25, "Quick held-out evaluation every N steps (0: only at the end).")
    save_every: int = doc(50, "Save a resumable checkpoint (policy, value model, optimizer) every N steps (0: end).")
    log_samples: int = doc(4, "Completions written to samples.jsonl per logged step.")
    samples_every: int = doc(10, "Write samples every N steps.")
    truncation_warning: float = doc(0.5, "Warn when more than this share of a step's completions is cut off.")
    eval: bool = doc(True, "Evaluate the final policy on the held-out split.")

    def __post_init__(self):
        if self.group_size < 1:
            raise ValueError("group_size must be at least 1")
        if self.minibatches < 1 or self.updates_per_rollout < 1:
            raise ValueError("minibatches and updates_per_rollout must be at least 1")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must lie in [0, 1], got {self.gamma} and {self.lam}")
        if self.target_kl is not None and (self.kl_coef <= 0 or self.target_kl <= 0):
            raise ValueError("an adaptive KL coefficient (target_kl) needs kl_coef > 0 and target_kl > 0: "
                             "it multiplies β, so β = 0 would stay 0")


# --- the pure parts: rewards -> advantages, and the KL controller -------------------------------------------------

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
                   whiten_advantages: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Rollout rewards and values -> (advantages, returns, token rewards), each (B, T), masked positions 0.

    Returns are R_t = A_t + V(s_t) before advantage whitening (the critic's target). With γ = λ = 1, V ≡ 0, β = 0
    and no whitening, A_t = R_t = the outcome on every token of the completion: REINFORCE.
    """
    rewards = token_rewards(outcome, mask, kl, kl_coef)
    if whiten_rewards:
        rewards = whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae(rewards, values.detach().float(), mask, gamma=gamma, lam=lam)
    if whiten_advantages:
        advantages = whiten(advantages, mask)
    return advantages, returns, rewards


def adaptive_kl_coef(coef: float, kl: float, target: float, horizon: int, n: int) -> float:
    """Ziegler et al. 2019 §2.2: e = clip(KL / target − 1, −0.2, 0.2); β ← β·(1 + e·n / horizon), n = completions."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return coef * (1.0 + error * n / horizon)


# --- the trainer ------------------------------------------------------------------------------------------------

def _value_source(cfg: PPOConfig, ctx) -> str:
    """Where the critic starts: an earlier stage (by name) or path, else the policy's start; a folder holding a
    ``value_model/`` (an earlier PPO stage's output) gives that critic."""
    source = cfg.value_init or ctx.init_checkpoint
    done = ctx.run_dir / source / "done.json"
    if cfg.value_init and done.is_file():
        source = json.loads(done.read_text())["checkpoint"]
    if (Path(source) / "value_model" / HEAD_FILE).is_file():
        source = str(Path(source) / "value_model")
    return source


def _grad_norm(params: list[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)).item() if norms else 0.0


def train(cfg: PPOConfig, ctx) -> str:
    """Run PPO from ``ctx.init_checkpoint``; returns the final checkpoint folder (with ``value_model/`` inside)."""
    model, tokenizer = ctx.load_policy()
    resume = load_training_state(ctx.checkpoint_dir)
    engine = make_engine(ctx.run.engine, model, tokenizer)
    device = ctx.device
    value_from = ctx.checkpoint_dir / "value_model" if resume else _value_source(cfg, ctx)
    value_model = init_value_model(value_from, dtype=ctx.run.dtype, device=device)
    ref_model = None
    if cfg.kl_coef > 0:  # β = 0 loads no reference model; the reference is always the stage's starting policy
        ref_model = (load_model(ctx.init_checkpoint, dtype=ctx.run.dtype, device=device)[0] if resume
                     else copy.deepcopy(model))
        ref_model.eval().requires_grad_(False)
    policy_params, value_params = list(model.parameters()), list(value_model.parameters())
    optimizer = torch.optim.AdamW([{"params": policy_params, "lr": cfg.lr},
                                   {"params": value_params, "lr": cfg.value_lr}],
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))  # one schedule, both groups
    start_step, kl_coef = 0, cfg.kl_coef
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start_step, kl_coef = resume["step"], resume["extra"].get("kl_coef", cfg.kl_coef)
        ctx.log(f"resuming PPO at step {start_step} (β = {kl_coef:.4g})")
    pad_id = tokenizer.pad_token_id
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens)
    # same pool and per-step draws as GRPO, so both algorithms see the same problems at every step
    train_pool = ctx.prompt_task(cfg.task).examples("train", max(4096, cfg.prompts_per_step * 64), seed=ctx.run.seed)
    if start_step == 0 and cfg.eval_every:
        ctx.quick_eval(engine, step=0)

    def save_state(folder: Path, step: int) -> None:
        save_training_state(folder, optimizer=optimizer, scheduler=scheduler, step=step, extra={"kl_coef": kl_coef})
        value_model.save(folder / "value_model")

    for step in range(start_step, cfg.steps):
        t0 = time.time()
        model.train()
        value_model.train()
        # 1-2. rollout and outcome rewards
        rng = torch.Generator().manual_seed(ctx.run.seed * 1_000_003 + step)
        index = torch.randint(len(train_pool), (cfg.prompts_per_step,), generator=rng).tolist()
        params.seed = ctx.run.seed * 7919 + step * 101
        rollout = collect_rollout(engine, ctx.template, [train_pool[i] for i in index], cfg.group_size, params,
                                  cfg.rewards, pad_id, mask_truncated=cfg.mask_truncated,
                                  rewards_by_task=cfg.rewards_by_task)
        metrics = rollout_metrics(rollout)
        if metrics["completion/truncated_frac"] > cfg.truncation_warning:
            ctx.warn(f"step {step}: {metrics['completion/truncated_frac']:.0%} of completions hit max_new_tokens="
                     f"{cfg.max_new_tokens} and were cut off (they earn no accuracy reward); raise max_new_tokens")
        batch = rollout.batch.to(device)
        mask = batch.completion_mask  # (B, C)
        size = len(rollout.generations)
        multi_pass = cfg.updates_per_rollout > 1 or cfg.minibatches > 1

        # 3-4. π_old, π_ref, V_old on the whole rollout before any update; KL rewards; GAE
        with torch.no_grad():
            old_logprobs = (completion_logprobs(model, batch)[0]
                            if multi_pass or ref_model is not None else None)  # (B, C)
            kl = None
            if ref_model is not None:
                kl = kl_penalty(old_logprobs, completion_logprobs(ref_model, batch)[0], cfg.kl_estimator)
                kl = torch.where(mask.bool(), kl, 0.0)  # (B, C)
            old_values = value_model.values(batch)  # (B, C)
            advantages, returns, rewards = ppo_advantages(
                rollout.rewards.to(device), old_values, mask, kl=kl, kl_coef=kl_coef, gamma=cfg.gamma, lam=cfg.lam,
                whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages)
            _, rollout_value_stats = value_loss(old_values, old_values, returns, mask)
        kl_per_completion = (kl.sum(-1).mean().item() if kl is not None else 0.0)

        # 5. PPO epochs over minibatches: clipped policy loss + value_coef × clipped value loss, one optimizer
        stats_sum, updates = {}, 0
        for _ in range(cfg.updates_per_rollout):
            order = torch.randperm(size) if multi_pass else torch.arange(size)
            for idx in order.chunk(cfg.minibatches):  # near-equal minibatches, whatever the rollout size
                idx = idx.to(device)
                mb = batch.select(idx)
                logprobs, entropy = completion_logprobs(model, mb, with_entropy=True)
                old = old_logprobs[idx] if old_logprobs is not None else logprobs.detach()
                policy_loss, policy_stats = ppo_policy_loss(
                    logprobs, old, advantages[idx], mb.completion_mask, clip_eps=cfg.clip_eps,
                    clip_eps_high=cfg.clip_eps_high, agg=cfg.loss_aggregation, max_len=cfg.max_new_tokens)
                v_loss, v_stats = value_loss(value_model.values(mb), old_values[idx], returns[idx],
                                             mb.completion_mask, clip_eps_value=cfg.value_clip)
                loss = policy_loss + cfg.value_coef * v_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"PPO loss is {loss.item()} at step {step} (policy "
                                             f"{policy_loss.item()}, value {v_loss.item()}): lower lr or check rewards")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm, value_grad_norm = _grad_norm(policy_params), _grad_norm(value_params)
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(policy_params + value_params, cfg.max_grad_norm)
                optimizer.step()
                engine.sync_weights()
                step_stats = {**policy_stats, "loss": policy_loss.item(), "value_loss": v_loss.item(),
                              "value_clip_frac": v_stats["value_clip_frac"], "grad_norm": grad_norm,
                              "value_grad_norm": value_grad_norm,
                              "entropy": masked_mean(entropy, mb.completion_mask).item()}
                for key, value in step_stats.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + value
                updates += 1
        scheduler.step()

        # 6. adaptive β from the KL this rollout had (used for the next rollout's rewards)
        coef_used = kl_coef
        if cfg.target_kl is not None and ref_model is not None:
            kl_coef = adaptive_kl_coef(kl_coef, kl_per_completion, cfg.target_kl, cfg.kl_horizon, size)

        # 7. log
        metrics.update({k: v / updates for k, v in stats_sum.items()})
        lrs = scheduler.get_last_lr()
        metrics.update({
            "explained_variance": rollout_value_stats["explained_variance"],
            "kl": masked_mean(kl, mask).item() if kl is not None else 0.0,
            "kl/per_completion": kl_per_completion, "kl_coef": coef_used,
            "returns/mean": masked_mean(returns, mask).item(), "values/mean": masked_mean(old_values, mask).item(),
            "token_reward/mean": masked_mean(rewards, mask).item(),
            "lr": lrs[0], "value_lr": lrs[1], "step_seconds": time.time() - t0,
        })
        ctx.log_metrics(step + 1, metrics)
        if cfg.samples_every and (step % cfg.samples_every == 0 or step + 1 == cfg.steps):
            ctx.log_samples(sample_lines(rollout, ctx.name, step + 1, cfg.log_samples))
        ctx.progress(step + 1, cfg.steps, f"reward {metrics['reward/mean']:.2f} "
                                          f"acc {metrics.get('reward/accuracy', float('nan')):.2f} "
                                          f"vloss {metrics['value_loss']:.3f} ev {metrics['explained_variance']:.2f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            ctx.quick_eval(engine, step=step + 1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            ctx.save_checkpoint(model, tokenizer, lambda folder: save_state(folder, step + 1))
    if cfg.eval_every:
        ctx.quick_eval(engine, step=cfg.steps)
    final = ctx.save_final(model, tokenizer)
    with atomic_dir(Path(final) / "value_model") as tmp:
        value_model.save(tmp)
    return final
