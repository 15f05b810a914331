"""What the trainers over a fixed data set share (SFT, DPO, reward model): their common settings, the data's
split and encoding, the order of the examples, and the optimizer-step loop with its log and checkpoints.

Each trainer keeps its loss (``sft_step_loss``, ``dpo_step``, ``bradley_terry_step``) and passes it to
``train_steps``, which runs: the next ``batch_size`` examples of this epoch (a fixed shuffle per epoch, so a resumed
run sees the same batches) -> the trainer's loss and backward -> clip, AdamW, schedule -> log, held-out metrics,
resumable checkpoint.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from r1lab.data.jsonl import DataFileError, split_held_out
from r1lab.encoding import drop_too_long
from r1lab.models import peak_memory
from r1lab.policy import OptimizerSettings, Policy, warmup_cosine
from r1lab.stage import Stage
from r1lab.stage_configs import FixedDataConfig, PairDataConfig


# --- data: split, encode, order ----------------------------------------------------------------------------------

def split_and_encode(stage: Stage, cfg: FixedDataConfig, rows: list[dict], encode: Callable[[list[dict]], list],
                     what: str = "examples") -> tuple[list, list, int]:
    """Training and held-out items (split by prompt hash), encoded, those over ``max_length`` dropped with a
    warning that names the first one. Returns (train, held out, number dropped); no training item is an error."""
    train_rows, eval_rows = split_held_out(rows, cfg.eval_fraction)
    train_set, dropped = drop_too_long(encode(train_rows), train_rows, cfg.max_length)
    eval_set, eval_dropped = drop_too_long(encode(eval_rows), eval_rows, cfg.max_length)
    if dropped or eval_dropped:
        stage.warn(f"{len(dropped) + len(eval_dropped)} of {len(rows)} {what} are longer than max_length="
                   f"{cfg.max_length} tokens and were dropped (first: {(dropped + eval_dropped)[0]}); raise "
                   f"max_length to keep them")
    if not train_set:
        raise DataFileError(f"{cfg.data}: no training {what[:-1]} fits in max_length={cfg.max_length} tokens")
    return train_set, eval_set, len(dropped) + len(eval_dropped)


def micro_batches(lengths: list[tuple[int, int]], token_budget: int) -> list[list[int]]:
    """Group example indices into micro-batches: sorted by total length, filled greedily while the padded size
    (rows × (longest prompt + longest completion), the ``make_batch`` layout) stays within ``token_budget``.
    ``lengths``: (prompt length, completion length) per example; ``token_budget`` 0: one micro-batch."""
    order = sorted(range(len(lengths)), key=lambda i: (sum(lengths[i]), i))
    if not token_budget:
        return [order] if order else []
    groups, current, width_p, width_c = [], [], 0, 0
    for i in order:
        p, c = lengths[i]
        wp, wc = max(width_p, p), max(width_c, c)
        if current and (len(current) + 1) * (wp + wc) > token_budget:
            groups.append(current)
            current, wp, wc = [], p, c
        current.append(i)
        width_p, width_c = wp, wc
    groups.append(current)
    return groups


def epoch_order(size: int, epoch: int, seed: int) -> list[int]:
    """The shuffle of an epoch: fixed by (seed, epoch), so a resumed run continues with the same batches."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()


def schedule_steps(cfg, train_size: int) -> tuple[int, int]:
    """(steps per epoch, total optimizer steps) for a config with epochs, batch_size and max_steps."""
    per_epoch = math.ceil(train_size / cfg.batch_size)
    total = per_epoch * cfg.epochs
    return per_epoch, min(total, cfg.max_steps) if cfg.max_steps else total


def step_indices(cfg, train_size: int, step: int, seed: int) -> list[int]:
    """Indices of the training examples of optimizer step ``step`` (0-based)."""
    per_epoch, _ = schedule_steps(cfg, train_size)
    epoch, position = divmod(step, per_epoch)
    return epoch_order(train_size, epoch, seed)[position * cfg.batch_size:(position + 1) * cfg.batch_size]


# --- the step loop ---------------------------------------------------------------------------------------------

def configure_optimizer(policy: Policy, cfg: FixedDataConfig, total_steps: int) -> None:
    """AdamW, linear warmup over ``warmup_ratio`` of the steps, cosine down to ``lr × min_lr_ratio``."""
    policy.configure_optimizer(
        OptimizerSettings(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                          max_grad_norm=cfg.max_grad_norm),
        warmup_cosine(total_steps, round(cfg.warmup_ratio * total_steps), cfg.min_lr_ratio))


def train_steps(stage: Stage, cfg: FixedDataConfig, policy: Policy, train_size: int, has_held_out: bool, *,
                step_loss: Callable[[list[int]], dict], held_out: Callable[[], dict],
                describe: Callable[[dict], str], save: Callable[[int], None], name: str) -> None:
    """From the policy's resume step to the last: ``step_loss(indices)`` accumulates the gradient of one step's
    examples and returns its stats ("loss" among them); then clip, AdamW, schedule, log (and ``held_out()`` every
    ``eval_every`` steps and at the end), ``save(step)`` every ``save_every`` steps."""
    per_epoch, total_steps = schedule_steps(cfg, train_size)
    for step in range(policy.resume_step, total_steps):
        started = time.time()
        policy.zero_grad()
        with policy.autocast():
            stats = step_loss(step_indices(cfg, train_size, step, stage.run.seed))
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"{name} loss is {stats['loss']} at step {step}: lower lr")
        lr = policy.learning_rates()["lr"]  # the rate this step uses
        norms = policy.optimizer_step()
        policy.schedule_step()
        seconds = time.time() - started
        metrics = {**stats, **norms, "lr": lr, "epoch": (step + 1) / per_epoch, "step_seconds": seconds,
                   **peak_memory(policy.device)}
        if "tokens" in stats:
            metrics["tokens_per_second"] = stats["tokens"] / max(seconds, 1e-9)
        if has_held_out and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total_steps):
            with policy.autocast():
                metrics.update(held_out())
        stage.log_metrics(step + 1, metrics)
        stage.progress(step + 1, total_steps, describe(metrics))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            save(step + 1)
