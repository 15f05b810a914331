"""One rollout for online RL (shared by GRPO and PPO): prompts -> G completions each -> rewards -> token batch,
and the metrics a user watches.

Rewards that fail are made visible here (``check_reward_errors``): a warning when a reward fails on more than half
of a step's completions, and the run stops when one fails on every completion for ``REWARD_FAILURE_STOP_STEPS``
steps in a row (a reward that never works trains nothing; README, "When something goes wrong").
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from r1lab.advantages import zero_spread_groups
from r1lab.config import ConfigError
from r1lab.dist import all_gather_objects, shard
from r1lab.engine import Generation, SamplingParams
from r1lab.generation import Generator, sample_and_score
from r1lab.logprobs import Batch, make_batch
from r1lab.models import peak_memory
from r1lab.policy import OptimizerSettings, Policy, warmup_from_zero_then_decay
from r1lab.rewards import ScoreResult
from r1lab.rewards.scoring import RewardFailedError, concat_scores
from r1lab.stage import Stage
from r1lab.tasks import task_metrics
from r1lab.stage_configs import OnlineRLConfig


@dataclass
class Rollout:
    """B = prompts × G completions, group members consecutive."""

    examples: list[dict]  # (B,) the example each completion answers
    generations: list[Generation]  # (B,)
    responses: list[str]  # (B,) prefill + completion text: what the rewards saw
    scores: ScoreResult
    rewards: torch.Tensor  # (B,) weighted total reward
    batch: Batch
    group_size: int


def collect_rollout(generator: Generator, template, examples: list[dict], group_size: int, params: SamplingParams,
                    reward_weights: dict[str, float], pad_id: int, *, mask_truncated: bool = False,
                    rewards_by_task: dict[str, dict[str, float]] | None = None) -> Rollout:
    """Sample ``group_size`` completions per example and score them (``r1lab.generation.sample_and_score``).

    ``mask_truncated``: completions cut at max_new_tokens get no loss (DAPO's overlong filtering), so the policy is
    not pushed toward or away from an answer it never finished. ``rewards_by_task``: see ``score_completions``.
    """
    samples = sample_and_score(generator, template, examples, group_size, params, rewards=reward_weights,
                               rewards_by_task=rewards_by_task)
    generations = samples.generations
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations], pad_id)
    if mask_truncated:
        keep = torch.tensor([0.0 if g.truncated else 1.0 for g in generations])
        batch.completion_mask = batch.completion_mask * keep[:, None]
    rewards = torch.tensor(samples.scores.total, dtype=torch.float32)
    return Rollout(samples.examples, generations, samples.responses, samples.scores, rewards, batch, group_size)


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Join rollouts (dynamic sampling refills the batch with more groups)."""
    if len(parts) == 1:
        return parts[0]
    generations = [g for p in parts for g in p.generations]
    masks = []
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations], pad_id)
    for p in parts:  # keep each part's completion mask (truncation masking) at the new width
        m = torch.zeros(p.batch.completion_mask.shape[0], batch.completion_mask.shape[1])
        m[:, : p.batch.completion_mask.shape[1]] = p.batch.completion_mask
        masks.append(m)
    batch.completion_mask = torch.cat(masks)
    scores = concat_scores([p.scores for p in parts])
    return Rollout([e for p in parts for e in p.examples], generations, [r for p in parts for r in p.responses],
                   scores, torch.cat([p.rewards for p in parts]), batch, parts[0].group_size)


def gather_rollout(rollout: Rollout, pad_id: int) -> Rollout:
    """Under torchrun, every rank's rollout joined in rank order (what the step's metrics and samples describe);
    the rollout itself in one process."""
    parts = all_gather_objects(rollout)
    return concat_rollouts(parts, pad_id) if len(parts) > 1 else rollout


def select_groups(rollout: Rollout, keep_groups: torch.Tensor) -> Rollout:
    """The rollout restricted to the groups where ``keep_groups`` (n_groups,) is True."""
    g = rollout.group_size
    index = [i for i in range(len(rollout.generations)) if bool(keep_groups[i // g])]
    pick = lambda xs: [xs[i] for i in index]
    # errors and scored stay those of the whole rollout: every completion was scored, kept or not
    scores = ScoreResult(total=pick(rollout.scores.total),
                         per_reward={k: pick(v) for k, v in rollout.scores.per_reward.items()},
                         errors=dict(rollout.scores.errors), scored=dict(rollout.scores.scored),
                         first_errors=dict(rollout.scores.first_errors))
    return Rollout(pick(rollout.examples), pick(rollout.generations), pick(rollout.responses), scores,
                   rollout.rewards[index], rollout.batch.select(torch.tensor(index)), g)


class SamplerGap:
    """The sampler–trainer gap of one rollout: mean |logprob(sampler) − logprob(trainer)| over the sampled tokens.

    The engine returns the logprob of each token it sampled; the trainer computes its own in the training forward
    pass. They should agree to rounding (fp32: ~1e-6; a bf16 sampler: ~0.01): a larger gap means the sampler ran
    other weights (a missed weight refresh) or another model. Only comparable when the rollout samples the
    trainer's distribution (temperature 1, no top-p or top-k truncation); otherwise nothing is measured.
    """

    def __init__(self, rollout: Rollout, cfg: OnlineRLConfig):
        generations = rollout.generations
        width = rollout.batch.completion_mask.shape[1]
        self.enabled = (cfg.temperature == 1.0 and cfg.top_p >= 1.0 and not cfg.top_k and bool(generations)
                        and all(len(g.logprobs) == len(g.completion_ids) for g in generations))
        self.sampler = torch.zeros(len(generations), width)
        self.mask = torch.zeros(len(generations), width)
        if self.enabled:
            for row, g in enumerate(generations):
                self.sampler[row, :len(g.logprobs)] = torch.tensor(g.logprobs)
                self.mask[row, :len(g.logprobs)] = 1.0
        self.total, self.tokens = 0.0, 0.0

    def add(self, rows: torch.Tensor, trainer_logprobs: torch.Tensor) -> None:
        """The trainer's logprobs (len(rows), C) of ``rows`` of the rollout, each row once."""
        if not self.enabled:
            return
        rows = rows.cpu()
        mask = self.mask[rows]
        self.total += ((trainer_logprobs.detach().float().cpu() - self.sampler[rows]).abs() * mask).sum().item()
        self.tokens += mask.sum().item()

    def metrics(self) -> dict:
        return {"sampler/logprob_gap": self.total / self.tokens} if self.tokens else {}


def rollout_metrics(rollout: Rollout, task=None) -> dict:
    """What a user needs to see about a rollout (in GRPO the loss alone says little: it starts near 0 whatever
    the policy does), plus the metrics of the task the prompts came from (``r1lab.tasks.task_metrics``)."""
    lengths = [len(g.completion_ids) for g in rollout.generations]
    metrics = {
        "reward/mean": rollout.rewards.mean().item(),
        "reward/std": rollout.rewards.std().item() if len(rollout.rewards) > 1 else 0.0,
        "completion/length_mean": statistics.fmean(lengths),
        "completion/length_max": max(lengths),
        "completion/length_min": min(lengths),
        "completion/truncated_frac": statistics.fmean(g.truncated for g in rollout.generations),
        "groups/zero_spread_frac": zero_spread_groups(rollout.rewards, rollout.group_size).float().mean().item(),
    }
    for name, values in rollout.scores.per_reward.items():
        present = [v for v in values if v is not None]
        short = name.rsplit(":", 1)[-1]
        metrics[f"reward/{short}"] = statistics.fmean(present) if present else 0.0
        metrics[f"reward/{short}_errors"] = rollout.scores.errors.get(name, 0)
    ordered = sorted(lengths)
    for q in (10, 50, 90):
        metrics[f"completion/length_p{q}"] = _percentile(ordered, q)
    metrics.update(task_metrics(task, rollout.examples, rollout.responses) if task is not None else {})
    return metrics


def _percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, linearly interpolated (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def sample_rows(rollout: Rollout, stage: str, step: int, limit: int) -> list[dict]:
    """Rows for samples.jsonl and the trackers: the first ``limit`` completions of this rollout."""
    rows = []
    for i in range(min(limit, len(rollout.generations))):
        rows.append({
            "stage": stage, "step": step, "prompt": rollout.examples[i]["prompt"], "completion": rollout.responses[i],
            "answer": rollout.examples[i].get("answer"), "reward": rollout.scores.total[i],
            "rewards": {k.rsplit(":", 1)[-1]: v[i] for k, v in rollout.scores.per_reward.items()},
            "truncated": rollout.generations[i].truncated})
    return rows


# --- what every online RL step does around its algorithm --------------------------------------------------------

def optimizer_settings(cfg: OnlineRLConfig, extra_groups: list[dict] | None = None) -> OptimizerSettings:
    """The policy's AdamW settings from an RL stage's config (``extra_groups``: e.g. PPO's critic)."""
    return OptimizerSettings(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                             max_grad_norm=cfg.max_grad_norm, extra_groups=list(extra_groups or []))


def start_online_rl(stage: Stage, cfg: OnlineRLConfig, policy: Policy,
                    extra_groups: list[dict] | None = None) -> tuple[Generator, object, list[dict]]:
    """What GRPO and PPO do before their first step: AdamW and the warmup-from-zero-then-decay schedule (restored on
    resume), the stage's generator, the task the prompts come from and its pool of training problems (the same for
    both algorithms, so that they see the same problems at every step), and the held-out evaluation of the start.
    Returns (generator, prompt task, pool)."""
    try:  # under torchrun each rank samples whole groups for an equal share of the prompts
        shard(cfg.prompts_per_step, "prompts_per_step")
    except ValueError as error:
        raise ConfigError(f"stage '{stage.name}': {error}") from error
    policy.configure_optimizer(optimizer_settings(cfg, extra_groups),
                               warmup_from_zero_then_decay(cfg.steps, cfg.warmup_steps, cfg.lr_schedule))
    generator = stage.generator(policy)
    prompt_task = stage.prompt_task(cfg.task)
    pool = prompt_task.examples("train", max(4096, cfg.prompts_per_step * 64), seed=stage.run.seed)
    if policy.resume_step == 0 and cfg.eval_every:
        stage.quick_eval(generator, step=0)
    return generator, prompt_task, pool


def draw_rollout(generator: Generator, stage: Stage, cfg, pool: list[dict], draws: torch.Generator,
                 sample_seed: int, pad_id: int) -> Rollout:
    """``prompts_per_step`` problems drawn from ``pool`` with ``draws``, ``cfg.group_size`` completions each, scored."""
    index = torch.randint(len(pool), (cfg.prompts_per_step,), generator=draws).tolist()
    start, stop = shard(cfg.prompts_per_step, "prompts_per_step")  # whole groups: this rank's prompts, G each
    index = index[start:stop]
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                            max_new_tokens=cfg.max_new_tokens, seed=sample_seed,
                            first_sequence=start * cfg.group_size)
    return collect_rollout(generator, stage.template, [pool[i] for i in index], cfg.group_size, params, cfg.rewards,
                           pad_id, mask_truncated=cfg.mask_truncated, rewards_by_task=cfg.rewards_by_task)


def step_seeds(seed: int, step: int) -> tuple[torch.Generator, int]:
    """The prompt draws and the sampling seed of an RL step: fixed by (run seed, step), so a resumed run samples
    what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step), seed * 7919 + step * 101


# Per stage folder: the last step on which too many completions were cut off (one warning per stretch of such steps).
_truncation_streaks: dict[str, int] = {}


def warn_if_truncated(stage: Stage, cfg: OnlineRLConfig, step: int, metrics: dict) -> None:
    """Warns when more than ``cfg.truncation_warning`` of the completions hit ``max_new_tokens``: once when a stretch
    of such steps begins (``step``: the loop's 0-based index; the message says ``step + 1``, as metrics.jsonl)."""
    key = str(stage.folder)
    if metrics["completion/truncated_frac"] > cfg.truncation_warning:
        if _truncation_streaks.get(key) != step - 1:
            stage.warn(f"step {step + 1}: {metrics['completion/truncated_frac']:.0%} of completions hit "
                       f"max_new_tokens={cfg.max_new_tokens} and were cut off (they earn no accuracy reward); raise "
                       f"max_new_tokens (said once while it lasts: completion/truncated_frac in metrics.jsonl has "
                       f"every step)")
        _truncation_streaks[key] = step


REWARD_FAILURE_STOP_STEPS = 3  # steps in a row on which a reward fails on every completion before the run stops

# Per (stage folder, reward): (the last step checked, steps in a row failing on every completion, steps in a row
# failing on more than half). A module-level record, as the check is one call per step, like warn_if_truncated.
_reward_failure_streaks: dict[tuple[str, str], tuple[int, int, int]] = {}


def check_reward_errors(stage: Stage, step: int, scores: ScoreResult, *,
                        stop_after: int = REWARD_FAILURE_STOP_STEPS) -> None:
    """Make failing rewards visible, once per RL step (``step``: the trainer's 0-based loop index, as for
    ``warn_if_truncated``; messages say ``step + 1``, the step metrics.jsonl logs).

    A reward that fails (``r1lab.rewards.score_completions``: raised, returned a non-number or NaN) on more than half
    of the completions it scored warns through ``stage.warn``, naming the reward, the count and its first error, once
    per stretch of such steps. One that fails on every completion for ``stop_after`` steps in a row stops the run
    with ``RewardFailedError``: its total is 0 for every completion, so it only hides the other rewards' signal.
    """
    for spec, failures in scores.errors.items():
        scored = scores.scored.get(spec, 0)
        key = (str(stage.folder), spec)
        last_step, all_failed, most_failed = _reward_failure_streaks.get(key, (-2, 0, 0))
        if last_step != step - 1:  # a gap (a resumed run, another stage run): the streaks start again
            all_failed = most_failed = 0
        all_failed = all_failed + 1 if scored and failures == scored else 0
        most_failed = most_failed + 1 if scored and failures * 2 > scored else 0
        _reward_failure_streaks[key] = (step, all_failed, most_failed)
        name = spec.rsplit(":", 1)[-1]
        first_error = scores.first_errors.get(spec, "no error recorded")
        if all_failed >= stop_after:
            raise RewardFailedError(
                f"stage '{stage.name}': reward {name!r} failed on every completion for {all_failed} steps in a row "
                f"(steps {step + 2 - all_failed}-{step + 1}, {failures} of {scored} at the last); its first error: "
                f"{first_error}. Fix the reward (its traceback was logged at its first failure) or take it out of "
                f"rewards, then run the same command again to resume from the last checkpoint")
        if most_failed == 1:
            stage.warn(f"step {step + 1}: reward {name!r} failed on {failures} of {scored} completions (counted as 0); "
                       f"first error: {first_error}")


def finish_step(stage: Stage, cfg: OnlineRLConfig, policy: Policy, generator: Generator, step: int,
                rollout: Rollout, metrics: dict, started: float, progress: str, *, extra: dict | None = None,
                write_more=None) -> None:
    """The end of RL step ``step`` (0-based): learning rates, time and memory into ``metrics``, which are logged;
    samples every ``samples_every`` steps; progress; the quick evaluation and the resumable checkpoint when due."""
    gap = metrics.get("sampler/logprob_gap")
    if gap is not None and gap > cfg.logprob_gap_warning:
        stage.warn(f"step {step + 1}: the sampler's logprobs differ from the trainer's by {gap:.3f} on average "
                   f"(logprob_gap_warning {cfg.logprob_gap_warning}): the engine may sample with other weights than "
                   f"the policy's")
    metrics.update({**policy.learning_rates(), "step_seconds": time.time() - started, **peak_memory(policy.device)})
    stage.log_metrics(step + 1, metrics)
    if cfg.samples_every and (step % cfg.samples_every == 0 or step + 1 == cfg.steps):
        stage.log_samples(step + 1, sample_rows(rollout, stage.name, step + 1, cfg.log_samples))
    stage.progress(step + 1, cfg.steps, progress)
    if cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps:
        stage.quick_eval(generator, step=step + 1)
    if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps:
        stage.save_checkpoint(policy, step + 1, extra=extra, write_more=write_more)


def add_stats(totals: dict[str, float], stats: dict[str, float]) -> None:
    for key, value in stats.items():
        totals[key] = totals.get(key, 0.0) + value
