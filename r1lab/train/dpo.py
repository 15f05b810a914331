"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv 2305.18290), the offline baseline to GRPO.

DeepSeek used it for its V1 chat models; the R1 report trains with online GRPO instead. Running both on the same
data shows how offline preference learning compares with online RL (README, "The full R1 pipeline").

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


import torch

from r1lab.data.jsonl import read_preference_pairs
from r1lab.dist import share, sum_stats_over_ranks
from r1lab.encoding import EncodedPair, encode_pairs
from r1lab.fsdp import matching_passes
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.losses import dpo_loss
from r1lab.stage import Stage, StageOutput
from r1lab.supervised import configure_optimizer, schedule_steps, split_and_encode, train_steps
from r1lab.stage_configs import DPOConfig


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
    first, stop = share(len(pairs))  # under torchrun: this rank's pairs; weights are shares of every rank's
    totals: dict[str, float] = {}
    empty_passes = matching_passes(model, -(-(stop - first) // size))  # fsdp2: as many passes on every rank
    for start in range(first, stop, size):
        part = pairs[start:min(start + size, stop)]
        ref_part = ref[start:start + len(part)].to(device)
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
    for _ in range(empty_passes):  # weight 0
        zero = sum(side.sum() for side in pair_logprobs(model, pairs[:1], pad_id, device)) * 0.0
        if backward:
            zero.backward()
    return sum_stats_over_ranks(totals)


def train(cfg: DPOConfig, stage: Stage) -> StageOutput:
    """DPO from the stage's init model (also the reference) on ``cfg.data``; returns the final policy."""
    rows = read_preference_pairs(stage.outputs.data(cfg.data, stage=stage.name))  # fails before any model loads
    policy = stage.load_policy()
    train_set, eval_set, dropped = split_and_encode(
        stage, cfg, rows, lambda part: encode_pairs(policy.tokenizer, stage.template, part), what="pairs")
    pad_id, device, model = policy.tokenizer.pad_token_id, policy.device, policy.model
    if policy.resume:
        ref_train, ref_eval = policy.resume_extra["ref_train"], policy.resume_extra["ref_eval"]
    else:  # the policy is still the reference: its log-probs, once, for every pair
        ref_train = reference_logprobs(model, train_set, pad_id, cfg.micro_batch_size, device)
        ref_eval = reference_logprobs(model, eval_set, pad_id, cfg.micro_batch_size, device)
        stage.log(f"{len(train_set)} training pairs, {len(eval_set)} held out; reference log-probs computed")
        stage.log_metrics(0, {"data/train_pairs": len(train_set), "data/eval_pairs": len(eval_set),
                              "data/dropped_too_long": dropped})
    configure_optimizer(policy, cfg, schedule_steps(cfg, len(train_set))[1])

    @torch.no_grad()
    def held_out() -> dict:
        model.eval()
        stats = dpo_step(model, eval_set, ref_eval, pad_id, cfg.beta, cfg.micro_batch_size, device)
        model.train()
        return {f"eval/{key}": stats[key] for key in ("loss", "reward_accuracy", "reward_margin")}

    policy.train()
    train_steps(
        stage, cfg, policy, len(train_set), bool(eval_set), name="DPO",
        step_loss=lambda index: dpo_step(model, [train_set[i] for i in index], ref_train[index], pad_id, cfg.beta,
                                         cfg.micro_batch_size, device, backward=True),
        held_out=held_out,
        describe=lambda m: f"loss {m['loss']:.3f} acc {m['reward_accuracy']:.2f} margin {m['reward_margin']:.3f}",
        save=lambda step: stage.save_checkpoint(policy, step, extra={"ref_train": ref_train, "ref_eval": ref_eval}))
    return stage.save_final(policy)
