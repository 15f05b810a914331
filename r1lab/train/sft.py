"""Supervised fine-tuning on prompt/completion pairs: R1's cold start, rejection-sampling SFT and distillation.

One optimizer step, top to bottom:
  1. take the next ``batch_size`` training examples of this epoch (a fixed shuffle per epoch, so a resumed run sees the
     same batches);
  2. sort them by length and group them greedily into micro-batches of at most ``micro_batch_tokens`` padded tokens;
  3. per micro-batch: per-token logprobs of the completion tokens only (``r1lab.logprobs.completion_logprobs``), the
     negative log-likelihood (``r1lab.losses.sft_loss``), weighted by the micro-batch's share of the step's completion
     tokens, backward; so the step's loss is the token mean over the whole step however it is split;
  4. clip the gradient norm, AdamW step, learning rate: linear warmup then cosine to ``lr × min_lr_ratio``
     (DeepSeek-R1 arXiv 2501.12948 §2.3: 2–3 epochs, 5e-5 → 5e-6; distillation 1e-4 → 1e-5);
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


import torch

from r1lab.data.jsonl import read_sft_examples
from r1lab.dist import share, sum_stats_over_ranks
from r1lab.encoding import Encoded, encode_sft_examples
from r1lab.fsdp import matching_passes
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.losses import sft_loss
from r1lab.stage import Stage, StageOutput
from r1lab.supervised import (configure_optimizer, micro_batches, schedule_steps, split_and_encode, train_steps)
from r1lab.stage_configs import SFTConfig


# --- the loss over one step's examples ----------------------------------------------------------------------------

def sft_step_loss(model, examples: list[Encoded], pad_id: int, token_budget: int, *, device="cpu",
                  backward: bool = False) -> dict:
    """Token-mean NLL of the completions of ``examples``; with ``backward`` its gradient accumulates in the model.

    Each micro-batch's ``sft_loss`` is weighted by its share of the completion tokens, so the result (and the
    gradient) equals ``sft_loss`` over all the examples in one batch, however they are grouped. Under torchrun every
    rank calls this with the same ``examples`` and runs its own share of them (``r1lab.dist.share``); the weights are
    shares of every rank's tokens, so the gradients summed over ranks are the one-process gradient.
    Returns {"loss", "tokens" (completion tokens incl. EOS), "padding_frac" (padded share of the positions run)}.
    """
    total_tokens = sum(len(c) for _, c in examples)  # over every rank's share
    start, stop = share(len(examples))
    mine = examples[start:stop]
    sums = {"loss": 0.0, "padded": 0.0, "positions": 0.0}
    groups = micro_batches([(len(p), len(c)) for p, c in mine], token_budget)
    empty_passes = matching_passes(model, len(groups))  # fsdp2: every rank runs as many passes (agreed first)
    for group in groups:
        batch = make_batch([mine[i][0] for i in group], [mine[i][1] for i in group], pad_id).to(device)
        logprobs, _ = completion_logprobs(model, batch)  # (B, C)
        mask = batch.completion_mask  # (B, C): 1 on completion tokens and EOS
        loss = sft_loss(logprobs, mask)
        weight = mask.sum().item() / total_tokens
        if backward:
            (loss * weight).backward()
        sums["loss"] += loss.item() * weight
        sums["positions"] += batch.input_ids.numel()
        sums["padded"] += (batch.attention_mask == 0).sum().item()
    for _ in range(empty_passes):  # weight 0
        empty = make_batch([examples[0][0]], [examples[0][1]], pad_id).to(device)
        zero = completion_logprobs(model, empty)[0].sum() * 0.0
        if backward:
            zero.backward()
    sums = sum_stats_over_ranks(sums)
    return {"loss": sums["loss"], "tokens": total_tokens, "padding_frac": sums["padded"] / max(1, sums["positions"])}


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

def train(cfg: SFTConfig, stage: Stage) -> StageOutput:
    """Fine-tune the stage's init model on ``cfg.data``; returns the final policy."""
    rows = read_sft_examples(stage.outputs.data(cfg.data, stage=stage.name),  # a bad file fails before any model loads
                             chat=stage.run.template.kind == "chat")
    policy = stage.load_policy()
    train_set, eval_set, dropped = split_and_encode(
        stage, cfg, rows, lambda part: encode_sft_examples(policy.tokenizer, stage.template, part))
    pad_id, device = policy.tokenizer.pad_token_id, policy.device
    if not policy.resume:
        stage.log(f"{len(train_set)} training examples, {len(eval_set)} held out")
        stage.log_metrics(0, {"data/train_examples": len(train_set), "data/eval_examples": len(eval_set),
                              "data/dropped_too_long": dropped})
    configure_optimizer(policy, cfg, schedule_steps(cfg, len(train_set))[1])
    policy.train()
    train_steps(
        stage, cfg, policy, len(train_set), bool(eval_set), name="SFT",
        step_loss=lambda index: sft_step_loss(policy.model, [train_set[i] for i in index], pad_id,
                                              cfg.micro_batch_tokens, device=device, backward=True),
        held_out=lambda: {"eval/loss": held_out_loss(policy.model, eval_set, pad_id, cfg.batch_size,
                                                     cfg.micro_batch_tokens, device)},
        describe=lambda m: f"loss {m['loss']:.3f}" + (f" eval {m['eval/loss']:.3f}" if "eval/loss" in m else ""),
        save=lambda step: stage.save_checkpoint(policy, step))
    return stage.save_final(policy)
