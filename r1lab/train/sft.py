"""Supervised fine-tuning on prompt/completion pairs: R1's cold start, rejection-sampling SFT and distillation.

One optimizer step, top to bottom:
  1. take the next ``batch_size`` training examples of this epoch (a fixed shuffle per epoch, so a resumed run sees the
     same batches);
  2. sort them by length and group them greedily into micro-batches of at most ``micro_batch_tokens`` padded tokens;
  3. per micro-batch: per-token logprobs of the completion tokens only (``r1lab.logprobs.completion_logprobs``), the
     negative log-likelihood (``r1lab.losses.sft_loss``), weighted by the micro-batch's share of the step's completion
     tokens, backward; so the step's loss is the token mean over the whole step however it is split;
  4. clip the gradient norm, AdamW step, learning rate: linear warmup then cosine to ``lr × min_lr_ratio``
     (R1, REFERENCE.md §1: 2–3 epochs, 5e-5 → 5e-6; distillation 1e-4 → 1e-5);
  5. log loss, tokens, padding share, learning rate; the loss on held-out prompts every ``eval_every`` steps.

What the model sees is what it sees at generation time: the prompt rendered with the run's template
(``PromptTemplate.render``, with the ``<think>`` prefill when configured), tokenized alone, then the completion's
tokens and EOS. The loss covers the completion and its EOS, never the prompt.

Deviation, on purpose: "packing" here is length bucketing, not several examples per row. Packing rows with restarting
position ids and no attention mask does isolate the examples in transformers 5 (checked on Qwen2, sdpa and eager, with
use_cache=False), but it needs a variant of ``completion_logprobs`` that takes position ids; until then the examples
of a step are grouped by length so that micro-batches carry little padding (``padding_frac`` is logged).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from r1lab.checkpoint import load_training_state, save_training_state, set_rng_state
from r1lab.config import doc
from r1lab.data.jsonl import DataFileError, read_sft_examples, resolve_data_path, split_held_out
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.losses import sft_loss
from r1lab.models import peak_memory

# (prompt token ids, completion token ids ending with EOS)
Encoded = tuple[list[int], list[int]]


@dataclass
class SFTConfig:
    kind: str = doc("sft", "Stage kind: supervised fine-tuning (cold start, rejection-sampling SFT, distillation).")
    init: str = doc("", "Checkpoint to start from: an earlier stage's name, a path or hub id (empty: previous stage).")
    data: str = doc("", "JSONL of {prompt, completion} rows ({messages} rows with template.kind: chat), or the name "
                        "of an earlier stage whose output is such a file.")
    epochs: int = doc(2, "Passes over the training examples (R1: 2–3).")
    max_steps: int = doc(0, "Stop after this many optimizer steps (0: all epochs); the schedule spans the steps run.")
    batch_size: int = doc(32, "Examples per optimizer step; its micro-batches accumulate gradients.")
    micro_batch_tokens: int = doc(8192, "Padded tokens per forward/backward: a step's examples are sorted by length "
                                        "and grouped greedily under this budget (0: the whole step at once).")
    max_length: int = doc(1024, "Longest prompt + completion in tokens; longer examples are dropped with a warning, "
                                "never truncated.")
    lr: float = doc(5e-5, "Peak learning rate (AdamW); R1 SFT 5e-5, distillation 1e-4.")
    min_lr_ratio: float = doc(0.1, "The cosine decay ends at lr × this (R1: 5e-5 → 5e-6).")
    warmup_ratio: float = doc(0.03, "Share of the optimizer steps spent in linear warmup.")
    weight_decay: float = doc(0.0, "AdamW weight decay.")
    max_grad_norm: float = doc(1.0, "Gradient clipping by global norm (0: off).")
    eval_fraction: float = doc(0.05, "Share of prompts held out for the eval loss (split by a hash of the prompt).")
    eval_every: int = doc(0, "Held-out loss every N steps (0: only at the end).")
    save_every: int = doc(100, "Save a resumable checkpoint every N steps (0: only at the end).")
    eval: bool = doc(True, "Evaluate the final policy on the task's held-out problems.")

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if self.micro_batch_tokens and self.micro_batch_tokens < self.max_length:
            raise ValueError(f"micro_batch_tokens ({self.micro_batch_tokens}) must be at least max_length "
                             f"({self.max_length}) so that the longest example fits in one micro-batch")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")


# --- text -> tokens (shared with the reward-model and DPO trainers) ----------------------------------------------

def split_response(template, prompt: str, response: str) -> tuple[str, str]:
    """(prompt text, completion text) with the boundary where generation puts it.

    The prompt text is ``template.render(prompt)``, with the ``<think>`` prefill when the template has one; a response
    that starts with the prefill loses it (the model never generates it), one that does not is taken as what follows
    it. With the r1_zero template the single space after "Assistant:" belongs to the completion, as in the pretraining
    corpus (``PromptTemplate.corpus_text``) and in what the model generates.
    """
    prompt_text = template.render(prompt)
    if template.cfg.kind == "r1_zero":
        response = response.lstrip(" ")
    full = template.corpus_text(prompt, response)
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text):]
    return prompt_text, response


def encode_texts(tokenizer, prompt_texts: list[str], completion_texts: list[str]) -> list[Encoded]:
    """Tokenize prompts and completions apart (as the sampler sees them) and end every completion with EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a completion must learn where to stop")
    if not prompt_texts:
        return []
    prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    completions = tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
    return [(list(p), list(c) + [tokenizer.eos_token_id]) for p, c in zip(prompts, completions)]


def encode_sft_examples(tokenizer, template, examples: list[dict]) -> list[Encoded]:
    """Rows from ``read_sft_examples`` -> token ids. Chat rows: every turn before the last is the prompt (the
    tokenizer's chat template with the generation prompt), the last assistant turn is the completion."""
    prompt_texts, completion_texts = [], []
    for example in examples:
        if "messages" in example:
            prompt_texts.append(tokenizer.apply_chat_template(example["messages"][:-1], tokenize=False,
                                                              add_generation_prompt=True))
            completion_texts.append(example["messages"][-1]["content"])
        else:
            prompt_text, completion_text = split_response(template, example["prompt"], example["completion"])
            prompt_texts.append(prompt_text)
            completion_texts.append(completion_text)
    return encode_texts(tokenizer, prompt_texts, completion_texts)


def drop_too_long(encoded: list[Encoded], examples: list[dict], max_length: int) -> tuple[list[Encoded], list[str]]:
    """The examples within ``max_length`` tokens, and the places (file:line) of those dropped."""
    kept, dropped = [], []
    for (p, c), example in zip(encoded, examples):
        if len(p) + len(c) <= max_length:
            kept.append((p, c))
        else:
            dropped.append(example.get("where", "?"))
    return kept, dropped


# --- batching, schedule, data order (shared with the reward-model and DPO trainers) -----------------------------

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


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR factor per optimizer step: linear warmup to 1, then cosine down to ``min_ratio`` at the last step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


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



def optimizer_and_schedule(model, cfg, total_steps: int, resume: dict | None):
    """AdamW with linear warmup then cosine decay (``cfg``: lr, weight_decay, warmup_ratio, min_lr_ratio), shared by
    the trainers over a fixed data set (SFT, DPO, reward model); restored, with the RNG, from ``resume`` (a
    checkpoint's training state) when there is one. Returns (optimizer, scheduler, first step)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = round(cfg.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total_steps, warmup, cfg.min_lr_ratio))
    if not resume:
        return optimizer, scheduler, 0
    optimizer.load_state_dict(resume["optimizer"])
    scheduler.load_state_dict(resume["scheduler"])
    set_rng_state(resume["rng"])
    return optimizer, scheduler, resume["step"]


def clipped_update(model, optimizer, scheduler, max_grad_norm: float) -> tuple[float, float]:
    """Clip the gradient norm (when ``max_grad_norm`` > 0), step the optimizer and the schedule. Returns the norm
    before clipping (0 when not clipped) and the learning rate this step used."""
    grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm).item()
                 if max_grad_norm > 0 else 0.0)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    return grad_norm, lr

# --- the loss over one step's examples ----------------------------------------------------------------------------

def sft_step_loss(model, examples: list[Encoded], pad_id: int, token_budget: int, *, device="cpu",
                  backward: bool = False) -> dict:
    """Token-mean NLL of the completions of ``examples``; with ``backward`` its gradient accumulates in the model.

    Each micro-batch's ``sft_loss`` is weighted by its share of the completion tokens, so the result (and the
    gradient) equals ``sft_loss`` over all the examples in one batch, however they are grouped.
    Returns {"loss", "tokens" (completion tokens incl. EOS), "padding_frac" (padded share of the positions run)}.
    """
    total_tokens = sum(len(c) for _, c in examples)
    loss_sum, padded, positions = 0.0, 0, 0
    for group in micro_batches([(len(p), len(c)) for p, c in examples], token_budget):
        batch = make_batch([examples[i][0] for i in group], [examples[i][1] for i in group], pad_id).to(device)
        logprobs, _ = completion_logprobs(model, batch)  # (B, C)
        mask = batch.completion_mask  # (B, C): 1 on completion tokens and EOS
        loss = sft_loss(logprobs, mask)
        weight = mask.sum().item() / total_tokens
        if backward:
            (loss * weight).backward()
        loss_sum += loss.item() * weight
        positions += batch.input_ids.numel()
        padded += (batch.attention_mask == 0).sum().item()
    return {"loss": loss_sum, "tokens": total_tokens, "padding_frac": padded / max(1, positions)}


@torch.no_grad()
def held_out_loss(model, examples: list[Encoded], pad_id: int, batch_size: int, token_budget: int,
                  device) -> float:
    """Token-mean NLL over the held-out examples, ``batch_size`` examples at a time, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        stats = sft_step_loss(model, examples[start:start + batch_size], pad_id, token_budget, device=device)
        loss_sum += stats["loss"] * stats["tokens"]
        tokens += stats["tokens"]
    model.train(was_training)
    return loss_sum / max(1, tokens)


# --- the trainer ------------------------------------------------------------------------------------------------

def load_examples(cfg: SFTConfig, ctx) -> list[dict]:
    path = resolve_data_path(cfg.data, ctx.run_dir, ctx.name)
    return read_sft_examples(path, chat=ctx.run.template.kind == "chat")


def train(cfg: SFTConfig, ctx) -> str:
    """Fine-tune ``ctx.init_checkpoint`` on ``cfg.data``; returns the final checkpoint folder."""
    rows = load_examples(cfg, ctx)  # a bad file fails before any model is loaded
    model, tokenizer = ctx.load_policy()
    train_rows, eval_rows = split_held_out(rows, cfg.eval_fraction)
    train_set, dropped = drop_too_long(encode_sft_examples(tokenizer, ctx.template, train_rows), train_rows,
                                       cfg.max_length)
    eval_set, eval_dropped = drop_too_long(encode_sft_examples(tokenizer, ctx.template, eval_rows), eval_rows,
                                           cfg.max_length)
    if dropped or eval_dropped:
        first = (dropped + eval_dropped)[0]
        ctx.warn(f"{len(dropped) + len(eval_dropped)} of {len(rows)} examples are longer than max_length="
                 f"{cfg.max_length} tokens and were dropped (first: {first}); raise max_length to keep them")
    if not train_set:
        raise DataFileError(f"{cfg.data}: no training example fits in max_length={cfg.max_length} tokens")
    per_epoch, total_steps = schedule_steps(cfg, len(train_set))
    ctx.log(f"{len(train_set)} training examples, {len(eval_set)} held out; {total_steps} steps "
            f"({per_epoch} per epoch)")

    device, pad_id, seed = ctx.device, tokenizer.pad_token_id, ctx.run.seed
    resume = load_training_state(ctx.checkpoint_dir)
    optimizer, scheduler, start_step = optimizer_and_schedule(model, cfg, total_steps, resume)
    if resume:
        ctx.log(f"resuming SFT at step {start_step}")
    else:
        ctx.log_metrics(0, {"data/train_examples": len(train_set), "data/eval_examples": len(eval_set),
                            "data/dropped_too_long": len(dropped) + len(eval_dropped)})

    model.train()
    for step in range(start_step, total_steps):
        t0 = time.time()
        examples = [train_set[i] for i in step_indices(cfg, len(train_set), step, seed)]
        optimizer.zero_grad(set_to_none=True)
        stats = sft_step_loss(model, examples, pad_id, cfg.micro_batch_tokens, device=device, backward=True)
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"SFT loss is {stats['loss']} at step {step}: lower lr")
        grad_norm, lr = clipped_update(model, optimizer, scheduler, cfg.max_grad_norm)

        seconds = time.time() - t0
        metrics = {**stats, "grad_norm": grad_norm, "lr": lr, "epoch": (step + 1) / per_epoch,
                   "step_seconds": seconds, "tokens_per_second": stats["tokens"] / max(seconds, 1e-9),
                   **peak_memory(device)}
        if eval_set and ((cfg.eval_every and (step + 1) % cfg.eval_every == 0) or step + 1 == total_steps):
            metrics["eval/loss"] = held_out_loss(model, eval_set, pad_id, cfg.batch_size, cfg.micro_batch_tokens,
                                                 device)
        ctx.log_metrics(step + 1, metrics)
        ctx.progress(step + 1, total_steps, f"loss {stats['loss']:.3f}"
                     + (f" eval {metrics['eval/loss']:.3f}" if "eval/loss" in metrics else ""))
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total_steps:
            ctx.save_checkpoint(model, tokenizer, lambda folder: save_training_state(
                folder, optimizer=optimizer, scheduler=scheduler, step=step + 1))
    return ctx.save_final(model, tokenizer)
