"""One rollout for online RL (shared by GRPO and PPO): prompts -> G completions each -> rewards -> token batch."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass

import torch

from r1lab.advantages import zero_spread_groups
from r1lab.engine import Generation, SamplingParams
from r1lab.logprobs import Batch, make_batch
from r1lab.rewards import ScoreResult, score_completions


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


def collect_rollout(engine, template, examples: list[dict], group_size: int, params: SamplingParams,
                    reward_weights: dict[str, float], pad_id: int, *, mask_truncated: bool = False,
                    rewards_by_task: dict[str, dict[str, float]] | None = None) -> Rollout:
    """Sample ``group_size`` completions per example and score them.

    ``mask_truncated``: completions cut at max_new_tokens get no loss (DAPO's overlong filtering), so the policy is
    not pushed toward or away from an answer it never finished. ``rewards_by_task``: see ``score_completions``.
    """
    groups = engine.generate([template.render(ex["prompt"]) for ex in examples], group_size, params)
    generations = [g for group in groups for g in group]
    flat_examples = [ex for ex in examples for _ in range(group_size)]
    responses = [template.prefill + g.text for g in generations]
    scores = score_completions(responses, flat_examples, reward_weights, rewards_by_task)
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations], pad_id)
    if mask_truncated:
        keep = torch.tensor([0.0 if g.truncated else 1.0 for g in generations])
        batch.completion_mask = batch.completion_mask * keep[:, None]
    rewards = torch.tensor(scores.total, dtype=torch.float32)
    return Rollout(flat_examples, generations, responses, scores, rewards, batch, group_size)


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
    per_reward = {k: [v for p in parts for v in p.scores.per_reward[k]] for k in parts[0].scores.per_reward}
    errors = {k: sum(p.scores.errors.get(k, 0) for p in parts) for k in parts[0].scores.errors}
    scores = ScoreResult(total=[t for p in parts for t in p.scores.total], per_reward=per_reward, errors=errors)
    return Rollout([e for p in parts for e in p.examples], generations, [r for p in parts for r in p.responses],
                   scores, torch.cat([p.rewards for p in parts]), batch, parts[0].group_size)


def select_groups(rollout: Rollout, keep_groups: torch.Tensor) -> Rollout:
    """The rollout restricted to the groups where ``keep_groups`` (n_groups,) is True."""
    g = rollout.group_size
    index = [i for i in range(len(rollout.generations)) if bool(keep_groups[i // g])]
    pick = lambda xs: [xs[i] for i in index]
    scores = ScoreResult(total=pick(rollout.scores.total),
                         per_reward={k: pick(v) for k, v in rollout.scores.per_reward.items()},
                         errors=dict(rollout.scores.errors))
    return Rollout(pick(rollout.examples), pick(rollout.generations), pick(rollout.responses), scores,
                   rollout.rewards[index], rollout.batch.select(torch.tensor(index)), g)


def rollout_metrics(rollout: Rollout) -> dict:
    """What a user needs to see about a rollout (the loss alone says little in GRPO, REFERENCE.md §4)."""
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
    metrics.update(task_accuracy_metrics(rollout))
    metrics.update(check_metrics(rollout))
    return metrics


def task_accuracy_metrics(rollout: Rollout) -> dict:
    """accuracy/task_<name> per source task when a rollout mixes tasks (all-scenario RL); empty otherwise.
    Verified by each example's verifier whatever the rewards were (a reward model scores domain prompts)."""
    from r1lab.rewards import extract_answer
    from r1lab.tasks import verify

    if len({str(example.get("task")) for example in rollout.examples}) < 2:
        return {}  # a single-task rollout: nothing to verify again on the RL step
    by_task: dict[str, list[bool]] = {}
    for example, response in zip(rollout.examples, rollout.responses):
        by_task.setdefault(str(example.get("task")), []).append(bool(verify(extract_answer(response), example)))
    return {f"accuracy/task_{name}": statistics.fmean(flags) for name, flags in sorted(by_task.items())}


def _percentile(ordered: list[float], q: float) -> float:
    """The q-th percentile of sorted values, linearly interpolated (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (position - low))


def check_metrics(rollout: Rollout) -> dict:
    """Self-checking in the completions of tasks whose reasoning has checks (r1lab.tasks.checks.CHECK_TASKS).

    checks/per_completion, checks/revisions_per_completion, checks/ok_precision and checks/no_precision (when such
    marks exist) and accuracy/by_checks/{0,1,2,3+} (pass rate of the completions with that many checks, when any).
    Empty for other tasks.
    """
    from r1lab.rewards import extract_answer
    from r1lab.tasks import verify
    from r1lab.tasks.checks import CHECK_TASKS, summarize_checks

    index = [i for i, ex in enumerate(rollout.examples) if ex.get("task") in CHECK_TASKS]
    if not index:
        return {}
    responses = [rollout.responses[i] for i in index]
    examples = [rollout.examples[i] for i in index]
    correct = [bool(verify(extract_answer(r), ex)) for r, ex in zip(responses, examples)]
    summary = summarize_checks(responses, examples, correct)
    metrics = {"checks/per_completion": summary["checks_per_completion"],
               "checks/revisions_per_completion": summary["revisions_per_completion"]}
    for key in ("ok_precision", "no_precision"):
        if summary[key] is not None:
            metrics[f"checks/{key}"] = summary[key]
    buckets: dict[str, list[int]] = {}  # "0", "1", "2", "3+" -> [correct, count]
    for n, entry in summary["accuracy_by_checks"].items():
        bucket = buckets.setdefault(str(n) if n < 3 else "3+", [0, 0])
        bucket[0] += round(entry["pass_rate"] * entry["count"])
        bucket[1] += entry["count"]
    for name, (hits, count) in buckets.items():
        metrics[f"accuracy/by_checks/{name}"] = hits / count
    return metrics


def sample_lines(rollout: Rollout, stage: str, step: int, limit: int) -> list[str]:
    """JSONL lines for samples.jsonl: the first ``limit`` completions of this rollout."""
    lines = []
    for i in range(min(limit, len(rollout.generations))):
        lines.append(json.dumps({
            "stage": stage, "step": step, "prompt": rollout.examples[i]["prompt"], "completion": rollout.responses[i],
            "answer": rollout.examples[i].get("answer"), "reward": rollout.scores.total[i],
            "rewards": {k.rsplit(":", 1)[-1]: v[i] for k, v in rollout.scores.per_reward.items()},
            "truncated": rollout.generations[i].truncated}))
    return lines
