"""Reward model: Bradley–Terry on preference pairs (Ouyang et al. 2022, arXiv 2203.02155), for R1's last RL stage.

R1 scores general (non-reasoning) prompts with preference reward models and reasoning prompts with rules
(DeepSeek-R1 arXiv 2501.12948 §2.3.4). The model is ``r1lab.value_model.ValueModel``: the base transformer of
the stage's starting checkpoint and a ``Linear(hidden, 1)`` head, the same module PPO uses as its critic, so a PPO
stage can start its critic from a reward model (``value_init: <this stage's final folder>``).

The score of (prompt, completion) is the head on the hidden state of the completion's last token. Completions end
with EOS and ``ValueModel.values`` gives, in each completion column, the value of the prefix before that token; the
EOS column is therefore the state after the whole completion.

One optimizer step: the next ``batch_size`` pairs; per micro-batch chosen and rejected in one forward; loss
``r1lab.losses.bradley_terry_loss`` = −log σ(s_chosen − s_rejected); clip, AdamW, warmup then cosine; log loss, pair
accuracy and margin; held-out accuracy at the end.

On disk (``<stage>/final``): the value model (backbone in Hugging Face format + ``value_head.safetensors``), the
tokenizer and ``reward_model.json`` (the template its prompts were rendered with). ``r1lab.rewards.reward_model``
reads it back (``load_reward_model``) and makes it a reward function (``make_reward_model_reward``).

The stage's output model is its starting checkpoint: the policy passes through unchanged, so a following stage
without ``init:`` continues from the policy; the reward model is the stage's ``reward_model`` output, named in later
stages' rewards as ``reward_model:<stage>``.
"""

from __future__ import annotations


import torch

from r1lab.checkpoint import load_training_state
from r1lab.data.jsonl import read_preference_pairs
from r1lab.dist import share, sum_stats_over_ranks
from r1lab.fsdp import matching_passes, shard_value_model
from r1lab.encoding import EncodedPair, encode_pairs
from r1lab.losses import bradley_terry_loss
from r1lab.models import load_tokenizer
from r1lab.policy import Policy
from r1lab.rewards.reward_model import save_reward_model, sequence_scores
from r1lab.stage import Stage, StageOutput
from r1lab.supervised import configure_optimizer, schedule_steps, split_and_encode, train_steps
from r1lab.value_model import ValueModel, init_value_model, load_value_model
from r1lab.stage_configs import RewardModelConfig


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
    first, stop = share(len(pairs))  # under torchrun: this rank's pairs; weights are shares of every rank's
    totals: dict[str, float] = {}
    empty_passes = matching_passes(value_model, -(-(stop - first) // size))  # fsdp2: as many passes on every rank
    for start in range(first, stop, size):
        part = pairs[start:min(start + size, stop)]
        chosen, rejected = pair_scores(value_model, part, pad_id, device)
        loss, stats = bradley_terry_loss(chosen, rejected)
        weight = len(part) / len(pairs)
        if backward:
            (loss * weight).backward()
        stats.update({"loss": loss.item(), "scores/chosen": chosen.mean().item(),
                      "scores/rejected": rejected.mean().item()})
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + weight * value
    for _ in range(empty_passes):  # weight 0
        zero = sum(side.sum() for side in pair_scores(value_model, pairs[:1], pad_id, device)) * 0.0
        if backward:
            zero.backward()
    return sum_stats_over_ranks(totals)


# --- the trainer ------------------------------------------------------------------------------------------------

def train(cfg: RewardModelConfig, stage: Stage) -> StageOutput:
    """Train a reward model from the init model's backbone; saves it to ``<stage>/final``. The policy passes
    through: the stage's output model is its init model."""
    rows = read_preference_pairs(stage.outputs.data(cfg.data, stage=stage.name))  # fails before any model loads
    tokenizer = load_tokenizer(stage.init)
    template = stage.use_tokenizer(tokenizer)
    train_set, eval_set, dropped = split_and_encode(stage, cfg, rows,
                                                    lambda part: encode_pairs(tokenizer, template, part), what="pairs")
    resume = load_training_state(stage.resume_dir)
    value_model = (load_value_model(stage.resume_dir, dtype=stage.run.dtype, device=stage.device) if resume
                   else init_value_model(stage.init, dtype=stage.run.dtype, device=stage.device))
    if stage.run.parallel == "fsdp2":  # sharded per backbone layer; the trainer below sees a sharded model
        shard_value_model(value_model, mixed_precision=stage.run.precision == "bf16-mixed")
    trainer = Policy(value_model, tokenizer, stage.device, init_checkpoint=stage.init, resume=resume)
    if not resume:
        stage.log(f"{len(train_set)} training pairs, {len(eval_set)} held out")
        stage.log_metrics(0, {"data/train_pairs": len(train_set), "data/eval_pairs": len(eval_set),
                              "data/dropped_too_long": dropped})
    configure_optimizer(trainer, cfg, schedule_steps(cfg, len(train_set))[1])
    pad_id, device = tokenizer.pad_token_id, stage.device
    info = {"stage": stage.name, "run": stage.run.name, "init": stage.init}

    @torch.no_grad()
    def held_out() -> dict:
        value_model.eval()
        stats = bradley_terry_step(value_model, eval_set, pad_id, cfg.micro_batch_size, device)
        value_model.train()
        return {f"eval/{key}": stats[key] for key in ("loss", "accuracy", "margin")}

    value_model.train()
    train_steps(
        stage, cfg, trainer, len(train_set), bool(eval_set), name="reward-model",
        step_loss=lambda index: bradley_terry_step(value_model, [train_set[i] for i in index], pad_id,
                                                   cfg.micro_batch_size, device, backward=True),
        held_out=held_out,
        describe=lambda m: f"loss {m['loss']:.3f} acc {m['accuracy']:.2f} margin {m['margin']:.3f}",
        save=lambda step: save_reward_model(value_model, tokenizer, stage.run.template, stage.checkpoint_dir,
                                            extra=info, write_state=lambda folder: trainer.save_training_state(
                                                folder, step)))
    final = save_reward_model(value_model, tokenizer, stage.run.template, stage.final_dir, extra=info)
    stage.log(f"reward model saved to {final}; the next stage starts from {stage.init} unless it sets init:")
    return StageOutput(model=stage.init, reward_model=str(final))
