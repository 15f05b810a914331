"""GRPO: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300 §4.1; used by DeepSeek-R1 §2.2).

One step, top to bottom:
  1. sample ``prompts_per_step`` training problems and G completions each from the current policy (π_old);
  2. score every completion with the rule rewards (accuracy + format by default);
  3. advantages: each completion's reward normalised within its group (no value model);
  4. ``updates_per_rollout`` (μ) passes over the rollout in ``minibatches``, each minimising the clipped surrogate
     with an optional k1/k2/k3 KL penalty to a frozen reference policy (``r1lab.losses.grpo_loss``);
  5. log reward, accuracy, format, KL, clip fraction, entropy, lengths, the share of groups with equal rewards.

The later fixes are options, not forks of this file:
  DAPO (arXiv 2503.14476): ``clip_eps_high=0.28``, ``loss_aggregation=token``, ``dynamic_sampling=true``,
  ``mask_truncated=true``. Dr. GRPO (arXiv 2503.20783): ``scale_rewards_by_std=false``,
  ``loss_aggregation=constant``, ``kl_coef=0``.

Deviations from the paper, on purpose: old logprobs come from the training forward pass, not from the sampler
(they agree up to the sampler's top-p/top-k truncation, which we leave at 1.0/0 during training by default).
The policy (model, reference, optimizer, micro-batching, checkpoints) is ``r1lab.policy.Policy``; the rollout and
the bookkeeping around a step are ``r1lab.rollout``.
"""

from __future__ import annotations

import time

import torch

from r1lab.advantages import group_advantages, zero_spread_groups
from r1lab.dist import world
from r1lab.losses import grpo_loss
from r1lab.rollout import (SamplerGap, add_stats, check_reward_errors, concat_rollouts, draw_rollout,
                           finish_step, gather_rollout, rollout_metrics, select_groups, start_online_rl, step_seeds,
                           warn_if_truncated)
from r1lab.stage import Stage, StageOutput
from r1lab.stage_configs import GRPOConfig


def train(cfg: GRPOConfig, stage: Stage) -> StageOutput:
    """Run GRPO from the stage's init model (or resume it); returns the final policy."""
    policy = stage.load_policy()
    policy.attach_reference(cfg.kl_coef > 0, resettable=bool(cfg.ref_reset_every))
    if cfg.ref_reset_every and policy.reference_adapters_off:
        stage.warn("ref_reset_every is ignored with LoRA: the reference is the base model (adapters off)")
    generator, prompt_task, pool = start_online_rl(stage, cfg, policy)
    pad_id, seed = policy.tokenizer.pad_token_id, stage.run.seed

    for step in range(policy.resume_step, cfg.steps):
        started = time.time()
        policy.train()
        # 1-2. rollout and rewards (dynamic sampling refills the batch with groups whose rewards differ)
        draws, sample_seed = step_seeds(seed, step)
        parts, kept_groups, rounds = [], 0, 0
        while True:
            part = draw_rollout(generator, stage, cfg, pool, draws, sample_seed + rounds, pad_id)
            if cfg.dynamic_sampling:
                part = select_groups(part, ~zero_spread_groups(part.rewards, cfg.group_size))
            parts.append(part)
            kept_groups += len(part.generations) // cfg.group_size
            rounds += 1
            if (not cfg.dynamic_sampling or kept_groups >= cfg.prompts_per_step // world().world_size
                    or rounds > cfg.dynamic_sampling_rounds):
                break
        rollout = concat_rollouts([p for p in parts if p.generations], pad_id) if kept_groups else parts[0]
        shown = gather_rollout(rollout, pad_id)  # under torchrun: every rank's completions, for the log
        metrics = {**rollout_metrics(shown, prompt_task), "rollout_seconds": time.time() - started}
        if cfg.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = rounds
        warn_if_truncated(stage, cfg, step, metrics)
        check_reward_errors(stage, step, shown.scores)

        # 3. group-normalised advantages: one value per completion, broadcast over its tokens
        advantages = group_advantages(rollout.rewards, cfg.group_size, scale_by_std=cfg.scale_rewards_by_std)
        batch, advantages = rollout.batch.to(policy.device), advantages.to(policy.device)
        size = len(rollout.generations)
        multi_pass = cfg.updates_per_rollout > 1 or cfg.minibatches > 1
        with torch.no_grad():  # π_old and π_ref on the whole rollout, before any update
            old_logprobs = policy.logprobs(batch)[0] if multi_pass else None
            ref_logprobs = policy.reference_logprobs(batch)
        gap = SamplerGap(rollout, cfg)  # the engine's logprobs against the trainer's, each completion once
        if old_logprobs is not None:
            gap.add(torch.arange(size), old_logprobs)

        def loss_fn(rows, part, logprobs):
            old = old_logprobs[rows] if old_logprobs is not None else logprobs.detach()
            if old_logprobs is None:  # one pass over the rollout: each row comes here once
                gap.add(rows, logprobs)
            ref = ref_logprobs[rows] if ref_logprobs is not None else None
            return grpo_loss(logprobs, old, ref, advantages[rows], part.completion_mask, clip_eps=cfg.clip_eps,
                             clip_eps_high=cfg.clip_eps_high, kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                             agg=cfg.loss_aggregation, max_len=cfg.max_new_tokens)

        # 4. μ passes over the rollout in minibatches; the policy splits each into micro-batches whose gradients
        #    add up to the minibatch's (weighted by tokens for the token-mean aggregation, else by sequences)
        totals, updates = {}, 0
        minibatch_size = max(1, size // cfg.minibatches)
        for _ in range(cfg.updates_per_rollout):
            order = torch.randperm(size) if multi_pass else torch.arange(size)
            for start in range(0, size, minibatch_size):
                policy.zero_grad()
                stats = policy.backward(batch, order[start:start + minibatch_size].to(policy.device), loss_fn,
                                        micro_batch_size=cfg.micro_batch_size, name=f"GRPO loss at step {step}",
                                        weight_by="tokens" if cfg.loss_aggregation == "token" else "sequences")
                add_stats(totals, {**stats, **policy.optimizer_step()})
                updates += 1
        policy.schedule_step()
        if cfg.ref_reset_every and (step + 1) % cfg.ref_reset_every == 0:
            policy.reset_reference()

        # 5. log, evaluate, save
        metrics.update({**{k: v / updates for k, v in totals.items()}, **gap.metrics()})
        finish_step(stage, cfg, policy, generator, step, shown, metrics, started,
                    f"reward {metrics['reward/mean']:.2f} acc {metrics.get('reward/accuracy', float('nan')):.2f} "
                    f"len {metrics['completion/length_mean']:.0f}")
    if cfg.eval_every:
        stage.quick_eval(generator, step=cfg.steps)
    return stage.save_final(policy)
