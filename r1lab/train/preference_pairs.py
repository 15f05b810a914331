"""The ``preference_pairs`` stage: {prompt, chosen, rejected} rows for a reward model and for DPO.

Two sources:
- samples of the stage's init checkpoint on the task's training prompts: for a prompt with both kinds, a correct
  completion (rule verifier) is chosen over an incorrect one. These are the pairs DPO (DeepSeek's V1 method) learns
  from offline, on the prompts GRPO learns from online.
- ``domain_pairs`` synthetic pairs on non-reasoning prompts (r1lab.tasks.domain): the reference response over one
  with a plausible wrong answer. A reward model trained on them scores domain prompts in all-scenario RL, where no
  rule verifier is used (R1 §2.3.4 used reward models for general data).

Writes ``<stage>/pairs.jsonl`` and ``<stage>/stats.json``; returns the data file (``data: <this stage's name>``).
"""

from __future__ import annotations

import random

from r1lab.generation import sample_and_score, sampling_params
from r1lab.rewards import extract_answer
from r1lab.tasks import verify
from r1lab.stage import Stage, StageOutput
from r1lab.tasks.domain import DomainTask, corrupted_answer
from r1lab.stage_configs import PreferencePairsConfig


def pairs_from_samples(examples: list[dict], groups: list[list[str]], pairs_per_prompt: int,
                       provenance: dict) -> list[dict]:
    """Correct-over-incorrect pairs: per example, up to ``pairs_per_prompt`` pairs of a completion that passes
    the verifier and one that does not, in sampling order."""
    pairs = []
    for example, completions in zip(examples, groups):
        right = [c for c in completions if verify(extract_answer(c), example)]
        wrong = [c for c in completions if not verify(extract_answer(c), example)]
        for chosen, rejected in list(zip(right, wrong))[:pairs_per_prompt]:
            pairs.append({"prompt": example["prompt"], "chosen": chosen, "rejected": rejected,
                          "source": {**provenance, "kind": "sampled"}})
    return pairs


def domain_preference_pairs(n: int, seed: int) -> list[dict]:
    """``n`` pairs on training-split domain prompts: the reference response over a corrupted answer."""
    task, rng = DomainTask(), random.Random(seed)
    pairs = []
    for example in task.examples("train", n, seed=seed):
        chosen = task.corpus_document(example, rng)
        rejected = f"<think>{example['thought']}</think><answer>{corrupted_answer(example, rng)}</answer>"
        pairs.append({"prompt": example["prompt"], "chosen": chosen, "rejected": rejected,
                      "source": {"generator": "domain", "kind": example["kind"]}})
    return pairs


def run_stage(cfg: PreferencePairsConfig, stage: Stage) -> StageOutput:
    """Write the pairs and their stats."""
    pairs: list[dict] = []
    stats: dict = {}
    if cfg.num_prompts:
        policy = stage.load_policy(trainable=False)
        examples = stage.task.examples("train", cfg.num_prompts, seed=stage.run.seed)
        samples = sample_and_score(stage.generator(policy), stage.template, examples, cfg.samples_per_prompt,
                                   sampling_params(cfg, stage.run.seed, stage.sample_progress),
                                   split_over_ranks=True)
        pairs += pairs_from_samples(examples, samples.groups(samples.responses), cfg.pairs_per_prompt,
                                    {"checkpoint": str(stage.init), "stage": stage.name})
        stats.update({"prompts": len(examples), "sampled": len(examples) * cfg.samples_per_prompt,
                      "sampled_pairs": len(pairs)})
    domain = domain_preference_pairs(cfg.domain_pairs, seed=stage.run.seed)
    stats["domain_pairs"] = len(domain)
    if not pairs + domain:
        raise RuntimeError(f"stage '{stage.name}': no prompt had both a correct and an incorrect sample; raise "
                           f"samples_per_prompt or temperature, or add domain_pairs")
    output = stage.write_data(pairs + domain, stats, cfg.output)
    stage.log(f"{stats['rows']} preference pairs -> {output.data_file} ({stats})")
    return output
