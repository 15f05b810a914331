"""PPO for language models: a critic, GAE and a per-token KL penalty in the reward (notation of
DeepSeekMath, arXiv 2402.03300 §2; PPO arXiv 1707.06347; GAE arXiv 1506.02438).

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

import time
from pathlib import Path

import torch

from r1lab.advantages import adaptive_kl_coef, ppo_advantages
from r1lab.checkpoint import atomic_dir
from r1lab.dist import all_reduce_sum, sum_over_ranks
from r1lab.fsdp import shard_value_model
from r1lab.losses import kl_penalty, masked_mean, ppo_policy_loss, value_loss
from r1lab.rollout import (SamplerGap, add_stats, check_reward_errors, draw_rollout, finish_step, gather_rollout,
                           rollout_metrics, start_online_rl, step_seeds, warn_if_truncated)
from r1lab.stage import Stage, StageOutput
from r1lab.value_model import HEAD_FILE, init_value_model
from r1lab.stage_configs import PPOConfig


# --- the trainer ------------------------------------------------------------------------------------------------

def value_model_source(source: str) -> str:
    """Where the critic starts: ``source`` (a model folder, a reward model or a hub id); a folder that holds a
    ``value_model/`` (an earlier PPO stage's output) gives that critic."""
    if (Path(source) / "value_model" / HEAD_FILE).is_file():
        return str(Path(source) / "value_model")
    return source


def train(cfg: PPOConfig, stage: Stage) -> StageOutput:
    """Run PPO from the stage's init model (or resume it); returns the final policy, ``value_model/`` inside it."""
    policy = stage.load_policy()
    value_from = (stage.resume_dir / "value_model" if policy.resume
                  else value_model_source(stage.outputs.model(cfg.value_init, default=stage.init, stage=stage.name)))
    value_model = init_value_model(value_from, dtype=stage.run.dtype, device=policy.device)
    if policy.sharded:  # parallel: fsdp2 shards the critic like the policy
        shard_value_model(value_model, mixed_precision=policy.mixed_precision)
    policy.attach_reference(cfg.kl_coef > 0)  # the reference is always the stage's starting policy
    # one AdamW and one schedule over policy and critic, with their own learning rates
    generator, prompt_task, pool = start_online_rl(
        stage, cfg, policy, [{"name": "value", "params": value_model.parameters(), "lr": cfg.value_lr,
                              "module": value_model}])
    kl_coef = policy.resume_extra.get("kl_coef", cfg.kl_coef)
    pad_id, seed = policy.tokenizer.pad_token_id, stage.run.seed

    for step in range(policy.resume_step, cfg.steps):
        started = time.time()
        policy.train()
        value_model.train()
        # 1-2. rollout and outcome rewards
        draws, sample_seed = step_seeds(seed, step)
        rollout = draw_rollout(generator, stage, cfg, pool, draws, sample_seed, pad_id)
        shown = gather_rollout(rollout, pad_id)  # under torchrun: every rank's completions, for the log
        metrics = rollout_metrics(shown, prompt_task)
        warn_if_truncated(stage, cfg, step, metrics)
        check_reward_errors(stage, step, shown.scores)
        batch = rollout.batch.to(policy.device)
        mask = batch.completion_mask  # (B, C)
        size = len(rollout.generations)
        all_completions = sum_over_ranks(size)  # under torchrun: every rank's
        multi_pass = cfg.updates_per_rollout > 1 or cfg.minibatches > 1

        # 3-4. π_old, π_ref, V_old on the whole rollout before any update; KL rewards; GAE
        with torch.no_grad():
            ref_logprobs = policy.reference_logprobs(batch)  # None when β = 0
            old_logprobs = policy.logprobs(batch)[0] if multi_pass or ref_logprobs is not None else None  # (B, C)
            kl = None
            if ref_logprobs is not None:
                kl = torch.where(mask.bool(), kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator), 0.0)
            old_values = value_model.values(batch)  # (B, C)
            advantages, returns, rewards = ppo_advantages(
                rollout.rewards.to(policy.device), old_values, mask, kl=kl, kl_coef=kl_coef, gamma=cfg.gamma,
                lam=cfg.lam, whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages,
                sum_over=all_reduce_sum)  # whitened over every rank's tokens
            _, rollout_value_stats = value_loss(old_values, old_values, returns, mask)
        gap = SamplerGap(rollout, cfg)  # the engine's logprobs against the trainer's, each completion once
        if old_logprobs is not None:
            gap.add(torch.arange(size), old_logprobs)
        kl_per_completion = sum_over_ranks(kl.sum().item()) / all_completions if kl is not None else 0.0

        def loss_fn(rows, part, logprobs):  # clipped policy loss + value_coef × clipped value loss
            old = old_logprobs[rows] if old_logprobs is not None else logprobs.detach()
            if old_logprobs is None:  # one pass over the rollout: each row comes here once
                gap.add(rows, logprobs)
            policy_loss, policy_stats = ppo_policy_loss(
                logprobs, old, advantages[rows], part.completion_mask, clip_eps=cfg.clip_eps,
                clip_eps_high=cfg.clip_eps_high, agg=cfg.loss_aggregation, max_len=cfg.max_new_tokens)
            v_loss, v_stats = value_loss(value_model.values(part), old_values[rows], returns[rows],
                                         part.completion_mask, clip_eps_value=cfg.value_clip)
            return policy_loss + cfg.value_coef * v_loss, {
                **policy_stats, "loss": policy_loss.item(), "value_loss": v_loss.item(),
                "value_clip_frac": v_stats["value_clip_frac"]}

        # 5. PPO epochs over near-equal minibatches, each split into micro-batches by the policy
        totals, updates = {}, 0
        for _ in range(cfg.updates_per_rollout):
            order = torch.randperm(size) if multi_pass else torch.arange(size)
            for rows in order.chunk(cfg.minibatches):
                policy.zero_grad()
                stats = policy.backward(batch, rows.to(policy.device), loss_fn, micro_batch_size=cfg.micro_batch_size,
                                        weight_by="tokens" if cfg.loss_aggregation == "token" else "sequences",
                                        name=f"PPO loss at step {step}")
                add_stats(totals, {**stats, **policy.optimizer_step()})
                updates += 1
        policy.schedule_step()

        # 6. adaptive β from the KL this rollout had (used for the next rollout's rewards)
        coef_used = kl_coef
        if cfg.target_kl is not None and kl is not None:
            kl_coef = adaptive_kl_coef(kl_coef, kl_per_completion, cfg.target_kl, cfg.kl_horizon,
                                       int(all_completions))

        # 7. log, evaluate, save (the critic inside the checkpoint)
        metrics.update({**{k: v / updates for k, v in totals.items()}, **gap.metrics()})
        metrics.update({
            "explained_variance": rollout_value_stats["explained_variance"],
            "kl": masked_mean(kl, mask).item() if kl is not None else 0.0,
            "kl/per_completion": kl_per_completion, "kl_coef": coef_used,
            "returns/mean": masked_mean(returns, mask).item(), "values/mean": masked_mean(old_values, mask).item(),
            "token_reward/mean": masked_mean(rewards, mask).item(),
        })
        finish_step(stage, cfg, policy, generator, step, shown, metrics, started,
                    f"reward {metrics['reward/mean']:.2f} acc {metrics.get('reward/accuracy', float('nan')):.2f} "
                    f"vloss {metrics['value_loss']:.3f} ev {metrics['explained_variance']:.2f}",
                    extra={"kl_coef": kl_coef}, write_more=lambda folder: value_model.save(folder and folder / "value_model"))
    if cfg.eval_every:
        stage.quick_eval(generator, step=cfg.steps)
    output = stage.save_final(policy)
    with atomic_dir(Path(output.model) / "value_model") as tmp:
        value_model.save(tmp)
    return output
