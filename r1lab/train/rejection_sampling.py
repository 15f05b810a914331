"""The ``rejection_sampling`` stage (DeepSeek-R1 §2.3.3): an SFT data set sampled from a checkpoint.

It samples ``samples_per_prompt`` completions for ``num_prompts`` training prompts from its init checkpoint, keeps the
correct and readable ones (r1lab.data.rejection), adds ``add_domain_examples`` non-reasoning rows
(r1lab.data.domain), writes ``<stage>/data.jsonl`` and ``<stage>/stats.json`` and returns the data file, so that a
later stage reads it with ``data: <this stage's name>``. The output is a file, not a model: a later training stage
sets ``init:`` (R1 fine-tunes the *base* model on this data).
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lab.config import doc
from r1lab.data.domain import domain_examples
from r1lab.data.rejection import ReadabilityFilters, rejection_sample
from r1lab.engine import SamplingParams
from r1lab.stage import Stage, StageOutput


@dataclass
class RejectionSamplingConfig:
    kind: str = doc("rejection_sampling", "Stage kind: sample from a checkpoint, keep correct readable completions.")
    init: str = doc("", "Checkpoint to sample from: an earlier stage's name, a path or hub id (empty: previous).")
    num_prompts: int = doc(256, "Training prompts to sample for.")
    samples_per_prompt: int = doc(4, "Completions per prompt (R1: several per prompt).")
    temperature: float = doc(0.7, "Sampling temperature.")
    top_p: float = doc(0.95, "Nucleus sampling.")
    max_new_tokens: int = doc(64, "Longest completion.")
    filters: ReadabilityFilters = doc(ReadabilityFilters(), "Readability filters and deduplication.")
    add_domain_examples: int = doc(0, "Non-reasoning rows (writing/formatting tasks) added to the data set.")
    output: str = doc("data.jsonl", "File name of the data set inside the stage folder.")
    eval: bool = doc(False, "The output is a data file, not a model: nothing to evaluate.")

    def __post_init__(self):
        if self.num_prompts < 1 or self.samples_per_prompt < 1:
            raise ValueError("num_prompts and samples_per_prompt must be at least 1")


def run_stage(cfg: RejectionSamplingConfig, stage: Stage) -> StageOutput:
    """Write the rejection-sampled data set (plus domain rows) and its stats."""
    policy = stage.load_policy(trainable=False)
    examples = stage.task.examples("train", cfg.num_prompts, seed=stage.run.seed)
    params = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
                            seed=stage.run.seed)
    rows, stats = rejection_sample(stage.generator(policy), stage.task, stage.template, examples,
                                   cfg.samples_per_prompt, params, filters=cfg.filters,
                                   provenance={"checkpoint": str(stage.init), "stage": stage.name})
    domain = domain_examples(cfg.add_domain_examples, seed=stage.run.seed)
    stats["domain_examples"] = len(domain)
    output = stage.write_data(rows + domain, stats, cfg.output, {"data/sampled": stats["sampled"],
                                                                 "data/correct": stats["correct"],
                                                                 "data/kept": stats["kept"]})
    stage.log(f"kept {stats['kept']} of {stats['sampled']} samples ({stats['correct']} correct), "
              f"+{len(domain)} domain rows -> {output.data_file}")
    return output
