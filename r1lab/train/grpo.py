"""GRPO: Group Relative Policy Optimization (DeepSeekMath, arXiv 2402.03300; used by DeepSeek-R1).

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
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Literal

import torch

from r1lab.advantages import group_advantages, zero_spread_groups
from r1lab.checkpoint import load_training_state, save_training_state, set_rng_state
from r1lab.config import doc
from r1lab.engine import SamplingParams, make_engine
from r1lab.lora import is_lora_model
from r1lab.logprobs import completion_logprobs
from r1lab.models import load_model, peak_memory
from r1lab.losses import grpo_loss
from r1lab.rollout import collect_rollout, concat_rollouts, rollout_metrics, sample_lines, select_groups
from r1lab.tasks import TaskConfig


@dataclass
class GRPOConfig:
    kind: str = doc("grpo", "Stage kind: GRPO reinforcement learning.")
    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    steps: int = doc(200, "RL steps (one rollout each).")
    prompts_per_step: int = doc(16, "Training problems per step.")
    group_size: int = doc(8, "G: completions sampled per problem.")
    max_new_tokens: int = doc(64, "Longest completion; longer ones are cut and count as truncated.")
    temperature: float = doc(1.0, "Sampling temperature for rollouts (R1-Zero: 1.0).")
    top_p: float = doc(1.0, "Nucleus sampling for rollouts (1.0 keeps sampler and trainer logprobs consistent).")
    top_k: int = doc(0, "Top-k sampling for rollouts (0: off).")
    lr: float = doc(1e-4, "Peak learning rate (AdamW).")
    lr_schedule: Literal["constant", "cosine", "linear"] = doc("constant", "Decay after warmup (to 10% at the end).")
    warmup_steps: int = doc(5, "Linear learning-rate warmup steps.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    updates_per_rollout: int = doc(1, "μ: passes over each rollout; with μ > 1 the ratio and clipping matter.")
    minibatches: int = doc(1, "Optimizer steps per pass over a rollout.")
    micro_batch_size: int = doc(0, "Sequences per forward/backward; gradients accumulate over a minibatch (0: all).")
    clip_eps: float = doc(0.2, "ε (ε_low): the ratio is clipped to [1 − ε_low, 1 + ε_high].")
    clip_eps_high: float | None = doc(None, "ε_high (DAPO clip-higher: 0.28); empty: equal to clip_eps.")
    kl_coef: float = doc(0.0, "β: weight of the KL penalty to the reference policy (0: no reference model loaded).")
    kl_estimator: Literal["k1", "k2", "k3"] = doc("k3", "KL estimator (GRPO uses k3).")
    ref_reset_every: int = doc(0, "Reset the reference policy to the current one every N steps (R1: 400; 0: never).")
    scale_rewards_by_std: bool = doc(True, "Divide advantages by the group std (Dr. GRPO: false).")
    loss_aggregation: Literal["sequence", "token", "constant"] = doc(
        "token", "sequence: GRPO as printed; token: DAPO; constant: Dr. GRPO (sum / (B × max_new_tokens)).")
    mask_truncated: bool = doc(False, "No loss on completions cut at max_new_tokens (DAPO overlong filtering).")
    dynamic_sampling: bool = doc(False, "Drop groups whose rewards are all equal and refill the batch (DAPO).")
    dynamic_sampling_rounds: int = doc(3, "Extra rollouts at most per step when refilling with dynamic sampling.")
    rewards: dict[str, float] = doc({"accuracy": 1.0, "format": 0.1},
                                    "Reward name, module:function or file.py:function -> weight.")
    rewards_by_task: dict[str, dict[str, float]] = doc(
        {}, "Per source task (an example's 'task' field), a reward set used instead of `rewards`, e.g. "
            "{domain: {'reward_model:rm': 1.0}} (R1's all-scenario RL; 'reward_model:<stage>' names a reward_model "
            "stage of this run).")
    task: TaskConfig = doc(TaskConfig(name=""), "Training prompts from this task instead of the run's (empty name: "
                                                "the run's), e.g. a mixture of reasoning and domain prompts; "
                                                "evaluation stays on the run's task.")
    eval_every: int = doc(25, "Quick held-out evaluation every N steps (0: only at the end).")
    save_every: int = doc(50, "Save a resumable checkpoint every N steps (0: only at the end).")
    log_samples: int = doc(4, "Completions written to samples.jsonl per logged step.")
    samples_every: int = doc(10, "Write samples every N steps.")
    truncation_warning: float = doc(0.5, "Warn when more than this share of a step's completions is cut off.")
    eval: bool = doc(True, "Evaluate the final policy on the held-out split.")

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError("group_size must be at least 2: GRPO's advantage compares completions of one prompt")
        if self.prompts_per_step * self.group_size % self.minibatches:
            raise ValueError("prompts_per_step × group_size must be divisible by minibatches")


def lr_lambda(cfg: GRPOConfig):
    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        progress = min(1.0, step / max(1, cfg.steps))
        if cfg.lr_schedule == "cosine":
            return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        if cfg.lr_schedule == "linear":
            return warm * (1 - 0.9 * progress)
        return warm

    return factor


def train(cfg: GRPOConfig, ctx) -> str:
    """Run GRPO from ``ctx.init_checkpoint``; returns the final checkpoint folder."""
    model, tokenizer = ctx.load_policy()
    resume = load_training_state(ctx.checkpoint_dir)
    engine = make_engine(ctx.run.engine, model, tokenizer)
    ref_model = None
    adapters_off_ref = cfg.kl_coef > 0 and is_lora_model(model)  # LoRA: π_ref is the policy with adapters off
    if adapters_off_ref and cfg.ref_reset_every:
        ctx.warn("ref_reset_every is ignored with LoRA: the reference is the base model (adapters off)")
    if cfg.kl_coef > 0 and not adapters_off_ref:  # β = 0 loads no reference model
        # The reference is the stage's starting model, also after a resume (the policy has moved on by then).
        ref_model = load_model(ctx.init_checkpoint, dtype=ctx.run.dtype, device=ctx.device)[0] if resume else \
            copy.deepcopy(model)
        ref_model.eval().requires_grad_(False)
        if resume and resume["extra"].get("ref_state") is not None:
            ref_model.load_state_dict(resume["extra"]["ref_state"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    start_step = 0
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        set_rng_state(resume["rng"])
        start_step = resume["step"]
        ctx.log(f"resuming GRPO at step {start_step}")
    pad_id = tokenizer.pad_token_id
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens)
    train_pool = ctx.prompt_task(cfg.task).examples("train", max(4096, cfg.prompts_per_step * 64), seed=ctx.run.seed)
    device = ctx.device
    if start_step == 0 and cfg.eval_every:
        ctx.quick_eval(engine, step=0)

    for step in range(start_step, cfg.steps):
        t0 = time.time()
        model.train()
        # 1-2. rollout and rewards (dynamic sampling refills the batch with groups whose rewards differ)
        rng = torch.Generator().manual_seed(ctx.run.seed * 1_000_003 + step)
        parts, kept_groups, rounds = [], 0, 0
        while True:
            index = torch.randint(len(train_pool), (cfg.prompts_per_step,), generator=rng).tolist()
            params.seed = ctx.run.seed * 7919 + step * 101 + rounds
            part = collect_rollout(engine, ctx.template, [train_pool[i] for i in index], cfg.group_size, params,
                                   cfg.rewards, pad_id, mask_truncated=cfg.mask_truncated,
                                   rewards_by_task=cfg.rewards_by_task)
            if cfg.dynamic_sampling:
                part = select_groups(part, ~zero_spread_groups(part.rewards, cfg.group_size))
            parts.append(part)
            kept_groups += len(part.generations) // cfg.group_size
            rounds += 1
            if not cfg.dynamic_sampling or kept_groups >= cfg.prompts_per_step or rounds > cfg.dynamic_sampling_rounds:
                break
        rollout = concat_rollouts([p for p in parts if p.generations], pad_id) if kept_groups else parts[0]
        metrics = rollout_metrics(rollout)
        metrics["rollout_seconds"] = time.time() - t0
        if cfg.dynamic_sampling:
            metrics["dynamic_sampling/rounds"] = rounds
        if metrics["completion/truncated_frac"] > cfg.truncation_warning:
            ctx.warn(f"step {step}: {metrics['completion/truncated_frac']:.0%} of completions hit max_new_tokens="
                     f"{cfg.max_new_tokens} and were cut off (they earn no accuracy reward); raise max_new_tokens")

        # 3. group-normalised advantages: one value per completion, broadcast over its tokens
        advantages = group_advantages(rollout.rewards, cfg.group_size, scale_by_std=cfg.scale_rewards_by_std)
        batch = rollout.batch.to(device)
        advantages = advantages.to(device)
        size = len(rollout.generations)
        multi_pass = cfg.updates_per_rollout > 1 or cfg.minibatches > 1
        with torch.no_grad():  # π_old and π_ref on the whole rollout, before any update
            old_logprobs = completion_logprobs(model, batch)[0] if multi_pass else None
            ref_logprobs = completion_logprobs(ref_model, batch)[0] if ref_model is not None else None
            if adapters_off_ref:
                with model.disable_adapter():
                    ref_logprobs = completion_logprobs(model, batch)[0]

        # 4. μ passes over the rollout, each in minibatches; a minibatch may be split into micro-batches whose
        #    gradients add up to the minibatch's (weights follow the aggregation's denominator)
        stats_sum, entropy_sum, updates = {}, 0.0, 0
        minibatch_size = max(1, size // cfg.minibatches)
        for _ in range(cfg.updates_per_rollout):
            order = torch.randperm(size) if multi_pass else torch.arange(size)
            for start in range(0, size, minibatch_size):
                idx = order[start:start + minibatch_size].to(device)
                minibatch_tokens = batch.completion_mask[idx].sum().clamp(min=1)
                optimizer.zero_grad(set_to_none=True)
                step_stats, entropy_mean = {}, 0.0
                for micro in idx.split(cfg.micro_batch_size or len(idx)):
                    mb = batch.select(micro)
                    mask = mb.completion_mask
                    weight = (mask.sum() / minibatch_tokens if cfg.loss_aggregation == "token"
                              else torch.tensor(len(micro) / len(idx))).item()
                    logprobs, entropy = completion_logprobs(model, mb, with_entropy=True)
                    old = old_logprobs[micro] if old_logprobs is not None else logprobs.detach()
                    ref = ref_logprobs[micro] if ref_logprobs is not None else None
                    loss, stats = grpo_loss(logprobs, old, ref, advantages[micro], mask,
                                            clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                                            kl_coef=cfg.kl_coef, kl_estimator=cfg.kl_estimator,
                                            agg=cfg.loss_aggregation, max_len=cfg.max_new_tokens)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"GRPO loss is {loss.item()} at step {step}: lower lr or check "
                                                 f"the rewards")
                    (loss * weight).backward()
                    entropy_mean += weight * ((entropy * mask).sum() / mask.sum().clamp(min=1)).item()
                    for key, value in {**stats, "loss": loss.item()}.items():
                        step_stats[key] = step_stats.get(key, 0.0) + weight * value
                grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                             if cfg.max_grad_norm > 0 else torch.tensor(0.0))
                optimizer.step()
                engine.sync_weights()
                entropy_sum += entropy_mean
                for key, value in {**step_stats, "grad_norm": grad_norm.item()}.items():
                    stats_sum[key] = stats_sum.get(key, 0.0) + value
                updates += 1
        scheduler.step()
        if cfg.ref_reset_every and ref_model is not None and (step + 1) % cfg.ref_reset_every == 0:
            ref_model.load_state_dict(model.state_dict())

        # 5. log
        metrics.update({k: v / updates for k, v in stats_sum.items()})
        metrics.update({"entropy": entropy_sum / updates, "lr": scheduler.get_last_lr()[0],
                        "step_seconds": time.time() - t0, **peak_memory(device)})
        ctx.log_metrics(step + 1, metrics)
        if cfg.samples_every and (step % cfg.samples_every == 0 or step + 1 == cfg.steps):
            ctx.log_samples(sample_lines(rollout, ctx.name, step + 1, cfg.log_samples))
        ctx.progress(step + 1, cfg.steps, f"reward {metrics['reward/mean']:.2f} "
                                          f"acc {metrics.get('reward/accuracy', float('nan')):.2f} "
                                          f"len {metrics['completion/length_mean']:.0f}")
        if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
            ctx.quick_eval(engine, step=step + 1)
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
            extra = {"ref_state": ref_model.state_dict() if ref_model is not None and cfg.ref_reset_every else None}
            ctx.save_checkpoint(model, tokenizer, lambda folder: save_training_state(
                folder, optimizer=optimizer, scheduler=scheduler, step=step + 1, extra=extra))
    if cfg.eval_every:
        ctx.quick_eval(engine, step=cfg.steps)
    return ctx.save_final(model, tokenizer)
