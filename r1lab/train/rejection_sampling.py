"""The ``rejection_sampling`` stage (DeepSeek-R1 §2.3.3): an SFT data set sampled from a checkpoint.

It samples ``samples_per_prompt`` completions for ``num_prompts`` training prompts from its init checkpoint, keeps the
correct and readable ones (r1lab.data.rejection), adds ``add_domain_examples`` non-reasoning rows
(r1lab.data.domain), writes ``<stage>/data.jsonl`` and ``<stage>/stats.json`` and returns the data file, so that a
later stage reads it with ``data: <this stage's name>``. The output is a file, not a model: a later training stage
sets ``init:`` (R1 fine-tunes the *base* model on this data).
"""

from __future__ import annotations


from r1lab.data.domain import domain_examples
from r1lab.data.rejection import rejection_sample
from r1lab.generation import sampling_params
from r1lab.stage import Stage, StageOutput
from r1lab.stage_configs import RejectionSamplingConfig


def run_stage(cfg: RejectionSamplingConfig, stage: Stage) -> StageOutput:
    """Write the rejection-sampled data set (plus domain rows) and its stats."""
    policy = stage.load_policy(trainable=False)
    examples = stage.task.examples("train", cfg.num_prompts, seed=stage.run.seed)
    rows, stats = rejection_sample(stage.generator(policy), stage.task, stage.template, examples,
                                   cfg.samples_per_prompt, sampling_params(cfg, stage.run.seed, stage.sample_progress),
                                   filters=cfg.filters,
                                   provenance={"checkpoint": str(stage.init), "stage": stage.name})
    domain = domain_examples(cfg.add_domain_examples, seed=stage.run.seed)
    stats["domain_examples"] = len(domain)
    output = stage.write_data(rows + domain, stats, cfg.output, {"data/sampled": stats["sampled"],
                                                                 "data/correct": stats["correct"],
                                                                 "data/kept": stats["kept"]})
    stage.log(f"kept {stats['kept']} of {stats['sampled']} samples ({stats['correct']} correct), "
              f"+{len(domain)} domain rows -> {output.data_file}")
    return output
