"""Reward model: Bradley–Terry on preference pairs (Ouyang et al. 2022, arXiv 2203.02155), for R1's last RL stage.

R1 scores general (non-reasoning) prompts with preference reward models and reasoning prompts with rules
(REFERENCE.md §1, stage 4). The model is ``r1lab.value_model.ValueModel``: the base transformer of the stage's
starting checkpoint and a ``Linear(hidden, 1)`` head, the same module PPO uses as its critic, so a PPO stage can start
its critic from a reward model (``value_init: <this stage's final folder>``).

The score of (prompt, completion) is the head on the hidden state of the completion's last token. Completions end
with EOS and ``ValueModel.values`` gives, in each completion column, the value of the prefix before that token; the
EOS column is therefore the state after the whole completion.

One optimizer step: the next ``batch_size`` pairs; per micro-batch chosen and rejected in one forward; loss
``r1lab.losses.bradley_terry_loss`` = −log σ(s_chosen − s_rejected); clip, AdamW, warmup then cosine; log loss, pair
accuracy and margin; held-out accuracy at the end.

On disk (``<stage>/final``): the value model (backbone in Hugging Face format + ``value_head.safetensors``), the
tokenizer and ``reward_model.json`` (the template its prompts were rendered with). ``load_reward_model(path)`` reads it
back; ``make_reward_model_reward(path)`` makes it a reward function ``(completion, example) -> float``.

The stage returns its starting checkpoint, not the reward model: the policy passes through unchanged, so a following
stage without ``init:`` continues from the policy (a reward-model folder would also load as a causal LM, silently).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from r1lab.checkpoint import atomic_dir, load_training_state, save_training_state
from r1lab.config import doc, from_dict, to_dict
from r1lab.data.jsonl import DataFileError, split_held_out
from r1lab.logprobs import make_batch
from r1lab.losses import bradley_terry_loss
from r1lab.models import load_tokenizer, peak_memory, resolve_device
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.rewards.reward_model import INFO_FILE, RewardModel, load_reward_model, make_reward_model_reward, save_reward_model, sequence_scores  # noqa: F401
from r1lab.encoding import EncodedPair, encode_pairs
from r1lab.train.dpo import drop_long_pairs, load_pairs
from r1lab.train.sft import (clipped_update, encode_texts, optimizer_and_schedule, schedule_steps, split_response,
                             step_indices)
from r1lab.value_model import ValueModel, init_value_model, load_value_model

@dataclass
class RewardModelConfig:
    kind: str = doc("reward_model", "Stage kind: train a Bradley–Terry reward model on preference pairs.")
    init: str = doc("", "Backbone to start from: an earlier stage's name, a path or hub id (empty: previous stage); "
                        "the policy passes through the stage unchanged.")
    data: str = doc("", "JSONL of {prompt, chosen, rejected} rows, or the name of an earlier stage that wrote one.")
    epochs: int = doc(1, "Passes over the training pairs (InstructGPT: 1; more overfits).")
    max_steps: int = doc(0, "Stop after this many optimizer steps (0: all epochs); the schedule spans the steps run.")
    batch_size: int = doc(32, "Pairs per optimizer step.")
    micro_batch_size: int = doc(8, "Pairs per forward/backward (two sequences each); gradients accumulate (0: all).")
    max_length: int = doc(1024, "Longest prompt + completion in tokens; longer pairs are dropped with a warning.")
    lr: float = doc(1e-5, "Peak learning rate (AdamW) of backbone and head (InstructGPT RM: 9e-6).")
    min_lr_ratio: float = doc(0.1, "The cosine decay ends at lr × this.")
    warmup_ratio: float = doc(0.03, "Share of the optimizer steps spent in linear warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    eval_fraction: float = doc(0.05, "Share of prompts held out for eval accuracy (split by prompt hash).")
    eval_every: int = doc(0, "Held-out accuracy every N steps (0: only at the end).")
    save_every: int = doc(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    eval: bool = doc(False, "Run the task evaluation after the stage (of the policy, which this stage leaves as is).")

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 0:
            raise ValueError("epochs and batch_size must be at least 1, micro_batch_size at least 0")


# --- scores -----------------------------------------------------------------------------------------------------

def pair_scores(value_model: ValueModel, pairs: list[EncodedPair], pad_id: int,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,) of the chosen and of the rejected completions, in one forward over 2B sequences."""
    prompts = [p for p, _, _ in pairs]
    scores = sequence_scores(value_model, prompts + prompts, [c for _, c, _ in pairs] + [r for _, _, r in pairs],
                             pad_id, device)
    return scores[:len(pairs)], scores[len(pairs):]


def bradley_terry_step(value_model: ValueModel, pairs: list[EncodedPair], pad_id: int, micro_batch_size: int,
                       device, *, backward: bool = False) -> dict:
    """Bradley–Terry loss over ``pairs``, micro-batched (each part weighted by its share of the pairs, so the sum is
    the mean over all pairs); with ``backward`` its gradient accumulates. Returns loss, accuracy, margin, scores."""
    size = micro_batch_size or len(pairs)
    totals: dict[str, float] = {}
    for start in range(0, len(pairs), size):
        part = pairs[start:start + size]
        chosen, rejected = pair_scores(value_model, part, pad_id, device)
        loss, stats = bradley_terry_loss(chosen, rejected)
        weight = len(part) / len(pairs)
        if backward:
            (loss * weight).backward()
        stats.update({"loss": loss.item(), "scores/chosen": chosen.mean().item(),
                      "scores/rejected": rejected.mean().item()})
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + weight * value
    return totals


# --- the trainer ------------------------------------------------------------------------------------------------

def train(cfg: RewardModelConfig, ctx) -> str:
    """Train a reward model from ``ctx.init_checkpoint``'s backbone; saves it to ``<stage>/final`` and returns the
    starting checkpoint (the policy is unchanged)."""
    rows = load_pairs(cfg, ctx)  # a bad file fails before any model is loaded
    device, seed = ctx.device, ctx.run.seed
    tokenizer = load_tokenizer(ctx.init_checkpoint)
    template = PromptTemplate(ctx.run.template, tokenizer)
    train_rows, eval_rows = split_held_out(rows, cfg.eval_fraction)
    train_set, dropped = drop_long_pairs(encode_pairs(tokenizer, template, train_rows), train_rows, cfg.max_length)
    eval_set, eval_dropped = drop_long_pairs(encode_pairs(tokenizer, template, eval_rows), eval_rows, cfg.max_length)
    if dropped or eval_dropped:
        ctx.warn(f"{len(dropped) + len(eval_dropped)} of {len(rows)} pairs are longer than max_length="
                 f"{cfg.max_length} tokens and were dropped (first: {(dropped + eval_dropped)[0]})")
    if not train_set:
        raise DataFileError(f"{cfg.data}: no training pair fits in max_length={cfg.max_length} tokens")
    per_epoch, total_steps = schedule_steps(cfg, len(train_set))

    resume = load_training_state(ctx.checkpoint_dir)
    value_model = (load_value_model(ctx.checkpoint_dir, dtype=ctx.run.dtype, device=device) if resume
                   else init_value_model(ctx.init_checkpoint, dtype=ctx.run.dtype, device=device))
    pad_id = tokenizer.pad_token_id
    optimizer, scheduler, start_step = optimizer_and_schedule(value_model, cfg, total_steps, resume)
    if resume:
        ctx.log(f"resuming the reward model at step {start_step}")
    else:
        ctx.log(f"{len(train_set)} training pairs, {len(eval_set)} held out; {total_steps} steps")
        ctx.log_metrics(0, {"data/train_pairs": len(train_set), "data/eval_pairs": len(eval_set),
                            "data/dropped_too_long": len(dropped) + len(eval_dropped)})
    info = {"stage": ctx.name, "run": ctx.run.name, "init": ctx.init_checkpoint}

    @torch.no_grad()
    def held_out() -> dict:
        value_model.eval()
        stats = bradley_terry_step(value_model, eval_set, pad_id, cfg.micro_batch_size, device)
        value_model.train()
        return {f"eval/{key}": stats[key] for key in ("loss", "accuracy", "margin")}

    value_model.train()
    for step in range(start_step, total_steps):
        t0 = time.time()
        pairs = [train_set[i] for i in step_indices(cfg, len(train_set), step, seed)]
        optimizer.zero_grad(set_to_none=True)
        stats = bradley_terry_step(value_model, pairs, pad_id, cfg.micro_batch_size, device, backward=True)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"reward-model loss is {stats['loss']} at step {step}: lower lr")
        grad_norm, lr = clipped_update(value_model, optimizer, scheduler, cfg.max_grad_norm)
        metrics = {**stats, "grad_norm": grad_norm, "lr": lr, "epoch": (step + 1) / per_epoch,
                   "step_seconds": time.time() - t0, **peak_memory(device)}
        if eval_set and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total_steps):
            metrics.update(held_out())
        ctx.log_metrics(step + 1, metrics)
        ctx.progress(step + 1, total_steps, f"loss {stats['loss']:.3f} acc {stats['accuracy']:.2f} "
                                            f"margin {stats['margin']:.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            save_reward_model(value_model, tokenizer, ctx.run.template, ctx.checkpoint_dir, extra=info,
                              write_state=lambda folder: save_training_state(
                                  folder, optimizer=optimizer, scheduler=scheduler, step=step + 1))
    final = save_reward_model(value_model, tokenizer, ctx.run.template, ctx.final_dir, extra=info)
    ctx.log(f"reward model saved to {final}; the next stage starts from {ctx.init_checkpoint} unless it sets init:")
    return ctx.init_checkpoint
