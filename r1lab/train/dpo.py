"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), the offline baseline to GRPO.

DeepSeek used it for its V1 chat models; the R1 report trains with online GRPO instead. Running both on the same
data shows how offline preference learning compares with online RL (issue 4).

Before training, once: the sequence log-probs log π_ref(y | x) of every chosen and rejected completion under the
stage's starting model (the reference), so no second model is kept in memory. They are saved with every resumable
checkpoint, because after a resume the policy is no longer the reference.

One optimizer step, top to bottom:
  1. the next ``batch_size`` pairs of this epoch (a fixed shuffle per epoch);
  2. per micro-batch of ``micro_batch_size`` pairs: chosen and rejected completions in one forward, per-token logprobs
     of the completion tokens (``completion_logprobs``) summed into sequence log-probs;
  3. ``r1lab.losses.dpo_loss``: −log σ(β[(log π_c − log π_ref,c) − (log π_r − log π_ref,r)]), mean over pairs;
  4. clip, AdamW, warmup then cosine to ``lr × min_lr_ratio``;
  5. log loss, implicit-reward accuracy and margin, chosen and rejected rewards; on held-out pairs at the end.
At step 0 the policy is the reference, every margin is 0 and the loss is log 2.

Deviations, on purpose: the reference log-probs come from the model in eval mode (dropout off); a row's prompt is
rendered with the run's template exactly as in SFT (``r1lab.train.sft.split_response``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from r1lab.checkpoint import load_training_state, save_training_state
from r1lab.config import doc
from r1lab.data.jsonl import DataFileError, read_preference_pairs, resolve_data_path, split_held_out
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.losses import dpo_loss
from r1lab.models import peak_memory
from r1lab.train.sft import (clipped_update, encode_texts, optimizer_and_schedule, schedule_steps, split_response,
                             step_indices)

# (prompt ids, chosen completion ids + EOS, rejected completion ids + EOS)
EncodedPair = tuple[list[int], list[int], list[int]]


@dataclass
class DPOConfig:
    kind: str = doc("dpo", "Stage kind: DPO on preference pairs (offline baseline to GRPO).")
    init: str = doc("", "Checkpoint to start from (also the frozen reference): an earlier stage's name, a path or "
                        "hub id (empty: previous stage).")
    data: str = doc("", "JSONL of {prompt, chosen, rejected} rows, or the name of an earlier stage that wrote one.")
    beta: float = doc(0.1, "β: strength of the implicit KL to the reference (DPO paper: 0.1).")
    epochs: int = doc(1, "Passes over the training pairs.")
    max_steps: int = doc(0, "Stop after this many optimizer steps (0: all epochs); the schedule spans the steps run.")
    batch_size: int = doc(32, "Pairs per optimizer step.")
    micro_batch_size: int = doc(8, "Pairs per forward/backward (two sequences each); gradients accumulate (0: all).")
    max_length: int = doc(1024, "Longest prompt + completion in tokens; longer pairs are dropped with a warning.")
    lr: float = doc(1e-6, "Peak learning rate (AdamW); the DPO paper uses 1e-6 (tiny models need ~1e-4).")
    min_lr_ratio: float = doc(0.1, "The cosine decay ends at lr × this.")
    warmup_ratio: float = doc(0.1, "Share of the optimizer steps spent in linear warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    eval_fraction: float = doc(0.05, "Share of prompts held out for eval reward accuracy (split by prompt hash).")
    eval_every: int = doc(0, "Held-out metrics every N steps (0: only at the end).")
    save_every: int = doc(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    eval: bool = doc(True, "Evaluate the final policy on the task's held-out problems.")

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.micro_batch_size < 0:
            raise ValueError("epochs and batch_size must be at least 1, micro_batch_size at least 0")
        if self.beta <= 0:
            raise ValueError(f"beta must be positive, got {self.beta}")


def encode_pairs(tokenizer, template, pairs: list[dict]) -> list[EncodedPair]:
    """Preference rows -> token ids; both completions follow the same rendered prompt and end with EOS."""
    prompts = [template.render(x["prompt"]) for x in pairs]  # what split_response puts before every completion
    chosen = encode_texts(tokenizer, prompts, [split_response(template, x["prompt"], x["chosen"])[1] for x in pairs])
    rejected = encode_texts(tokenizer, prompts,
                            [split_response(template, x["prompt"], x["rejected"])[1] for x in pairs])
    return [(p, c, r) for (p, c), (_, r) in zip(chosen, rejected)]


def pair_logprobs(model, pairs: list[EncodedPair], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probs (B,) of the chosen and of the rejected completions: one forward over 2B sequences, the
    completion tokens' logprobs (EOS included) summed per sequence."""
    prompts = [p for p, _, _ in pairs]
    batch = make_batch(prompts + prompts, [c for _, c, _ in pairs] + [r for _, _, r in pairs], pad_id).to(device)
    logprobs, _ = completion_logprobs(model, batch)  # (2B, C)
    mask = batch.completion_mask.bool()
    sequence = torch.where(mask, logprobs, 0.0).sum(-1)  # (2B,)
    return sequence[:len(pairs)], sequence[len(pairs):]


@torch.no_grad()
def reference_logprobs(model, pairs: list[EncodedPair], pad_id: int, micro_batch_size: int, device) -> torch.Tensor:
    """(N, 2) sequence log-probs of (chosen, rejected) under ``model`` as it is now, in eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    size = micro_batch_size or len(pairs)
    parts = []
    for start in range(0, len(pairs), size):
        chosen, rejected = pair_logprobs(model, pairs[start:start + size], pad_id, device)
        parts.append(torch.stack([chosen, rejected], -1).float().cpu())
    model.train(was_training)
    return torch.cat(parts) if parts else torch.zeros(0, 2)


def dpo_step(model, pairs: list[EncodedPair], ref: torch.Tensor, pad_id: int, beta: float, micro_batch_size: int,
             device, *, backward: bool = False) -> dict:
    """DPO loss over ``pairs`` (ref: their (N, 2) reference log-probs), micro-batched; with ``backward`` the gradient
    of the mean over all pairs accumulates in the model. Returns the pair-weighted loss and stats."""
    size = micro_batch_size or len(pairs)
    totals: dict[str, float] = {}
    for start in range(0, len(pairs), size):
        part = pairs[start:start + size]
        ref_part = ref[start:start + size].to(device)
        chosen, rejected = pair_logprobs(model, part, pad_id, device)
        loss, stats = dpo_loss(chosen, rejected, ref_part[:, 0], ref_part[:, 1], beta=beta)
        weight = len(part) / len(pairs)
        if backward:
            (loss * weight).backward()
        with torch.no_grad():
            stats.update({"loss": loss.item(),
                          "rewards/chosen": (beta * (chosen - ref_part[:, 0])).mean().item(),
                          "rewards/rejected": (beta * (rejected - ref_part[:, 1])).mean().item(),
                          "logps/chosen": chosen.mean().item(), "logps/rejected": rejected.mean().item()})
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + weight * value
    return totals


def drop_long_pairs(encoded: list[EncodedPair], rows: list[dict], max_length: int):
    """The pairs whose prompt + longer completion fit in ``max_length`` tokens, and the places of those dropped."""
    kept, dropped = [], []
    for pair, row in zip(encoded, rows):
        if len(pair[0]) + max(len(pair[1]), len(pair[2])) <= max_length:
            kept.append(pair)
        else:
            dropped.append(row["where"])
    return kept, dropped


def load_pairs(cfg, ctx) -> list[dict]:
    return read_preference_pairs(resolve_data_path(cfg.data, ctx.run_dir, ctx.name))


def train(cfg: DPOConfig, ctx) -> str:
    """DPO from ``ctx.init_checkpoint`` (also the reference) on ``cfg.data``; returns the final checkpoint folder."""
    rows = load_pairs(cfg, ctx)  # a bad file fails before any model is loaded
    model, tokenizer = ctx.load_policy()
    train_rows, eval_rows = split_held_out(rows, cfg.eval_fraction)
    train_set, dropped = drop_long_pairs(encode_pairs(tokenizer, ctx.template, train_rows), train_rows,
                                        cfg.max_length)
    eval_set, eval_dropped = drop_long_pairs(encode_pairs(tokenizer, ctx.template, eval_rows), eval_rows,
                                            cfg.max_length)
    if dropped or eval_dropped:
        ctx.warn(f"{len(dropped) + len(eval_dropped)} of {len(rows)} pairs are longer than max_length="
                 f"{cfg.max_length} tokens and were dropped (first: {(dropped + eval_dropped)[0]})")
    if not train_set:
        raise DataFileError(f"{cfg.data}: no training pair fits in max_length={cfg.max_length} tokens")
    per_epoch, total_steps = schedule_steps(cfg, len(train_set))
    device, pad_id, seed = ctx.device, tokenizer.pad_token_id, ctx.run.seed

    resume = load_training_state(ctx.checkpoint_dir)
    optimizer, scheduler, start_step = optimizer_and_schedule(model, cfg, total_steps, resume)
    if resume:
        ref_train, ref_eval = resume["extra"]["ref_train"], resume["extra"]["ref_eval"]
        ctx.log(f"resuming DPO at step {start_step}")
    else:  # the policy is still the reference: its log-probs, once, for every pair
        ref_train = reference_logprobs(model, train_set, pad_id, cfg.micro_batch_size, device)
        ref_eval = reference_logprobs(model, eval_set, pad_id, cfg.micro_batch_size, device)
        ctx.log(f"{len(train_set)} training pairs, {len(eval_set)} held out; reference log-probs computed; "
                f"{total_steps} steps")
        ctx.log_metrics(0, {"data/train_pairs": len(train_set), "data/eval_pairs": len(eval_set),
                            "data/dropped_too_long": len(dropped) + len(eval_dropped)})

    @torch.no_grad()
    def held_out() -> dict:
        model.eval()
        stats = dpo_step(model, eval_set, ref_eval, pad_id, cfg.beta, cfg.micro_batch_size, device)
        model.train()
        return {f"eval/{key}": stats[key] for key in ("loss", "reward_accuracy", "reward_margin")}

    model.train()
    for step in range(start_step, total_steps):
        t0 = time.time()
        index = step_indices(cfg, len(train_set), step, seed)
        optimizer.zero_grad(set_to_none=True)
        stats = dpo_step(model, [train_set[i] for i in index], ref_train[index], pad_id, cfg.beta,
                         cfg.micro_batch_size, device, backward=True)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"DPO loss is {stats['loss']} at step {step}: lower lr")
        grad_norm, lr = clipped_update(model, optimizer, scheduler, cfg.max_grad_norm)
        metrics = {**stats, "grad_norm": grad_norm, "lr": lr, "epoch": (step + 1) / per_epoch,
                   "step_seconds": time.time() - t0, **peak_memory(device)}
        if eval_set and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total_steps):
            metrics.update(held_out())
        ctx.log_metrics(step + 1, metrics)
        ctx.progress(step + 1, total_steps, f"loss {stats['loss']:.3f} acc {stats['reward_accuracy']:.2f} "
                                            f"margin {stats['reward_margin']:.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            extra = {"ref_train": ref_train, "ref_eval": ref_eval}
            ctx.save_checkpoint(model, tokenizer, lambda folder: save_training_state(
                folder, optimizer=optimizer, scheduler=scheduler, step=step + 1, extra=extra))
    return ctx.save_final(model, tokenizer)
