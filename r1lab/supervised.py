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
from dataclasses import dataclass
from typing import Callable

import torch

from r1lab.config import Problem, adam_betas_problems, at_least, doc, positive, raise_problems, within
from r1lab.data.jsonl import DataFileError, split_held_out
from r1lab.encoding import drop_too_long
from r1lab.models import peak_memory
from r1lab.policy import OptimizerSettings, Policy, warmup_cosine
from r1lab.stage import Stage


@dataclass
class FixedDataConfig:
    """The settings SFT, DPO and the reward-model trainer share; each trainer's config adds its own."""

    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    data: str = doc("", "JSONL file, or the name of an earlier stage that wrote one.")
    epochs: int = doc(1, "Passes over the training examples.")
    max_steps: int = doc(0, "Stop after this many optimizer steps (0: all epochs); the schedule spans the steps run.")
    batch_size: int = doc(32, "Examples per optimizer step; its micro-batches accumulate gradients.")
    max_length: int = doc(1024, "Longest prompt + completion in tokens; longer examples are dropped with a warning, "
                                "never truncated.")
    lr: float = doc(5e-5, "Peak learning rate (AdamW).")
    min_lr_ratio: float = doc(0.1, "The cosine decay ends at lr × this (R1: 5e-5 → 5e-6).")
    warmup_ratio: float = doc(0.03, "Share of the optimizer steps spent in linear warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.999], "AdamW β1, β2.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    eval_fraction: float = doc(0.05, "Share of prompts held out (split by a hash of the prompt).")
    eval_every: int = doc(0, "Held-out metrics every N steps (0: only at the end).")
    save_every: int = doc(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    eval: bool = doc(True, "Evaluate the final policy on the task's held-out problems.")

    def check(self) -> None:
        """Raise ``ConfigProblems`` with every problem of ``problems()`` (each trainer's ``__post_init__`` calls it)."""
        raise_problems(self.problems())

    def problems(self) -> list[Problem]:
        """The shared settings that cannot be used; a trainer's config adds its own."""
        return [*at_least(self, 1, "epochs", "batch_size", "max_length"),
                *at_least(self, 0, "max_steps", "weight_decay", "max_grad_norm", "eval_every", "save_every"),
                *positive(self, "lr"), *within(self, "min_lr_ratio", 0, 1), *within(self, "warmup_ratio", 0, 1),
                *within(self, "eval_fraction", 0, 1, open_high=True), *adam_betas_problems(self)]


@dataclass
class PairDataConfig(FixedDataConfig):
    """FixedDataConfig for preference pairs (DPO, reward model)."""

    data: str = doc("", "JSONL of {prompt, chosen, rejected} rows, or the name of an earlier stage that wrote one.")
    batch_size: int = doc(32, "Pairs per optimizer step.")
    micro_batch_size: int = doc(8, "Pairs per forward/backward (two sequences each); gradients accumulate (0: all).")

    def problems(self) -> list[Problem]:
        return [*super().problems(), *at_least(self, 0, "micro_batch_size", why=" (0: all pairs at once)")]


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
