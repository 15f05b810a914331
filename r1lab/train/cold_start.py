"""The ``cold_start`` stage (DeepSeek-R1 §2.3.1): a small set of readable long chain-of-thought rows for SFT.

Two sources, as in R1 (r1lab.data.cold_start):
- outputs of the stage's init checkpoint (R1-Zero): sampled, kept when correct and readable (no mixed-language
  chain of thought, no overlong paragraph, no code block; deduplicated), rewritten as reasoning then a summary;
- few-shot prompting of ``few_shot_from`` (the base model) with ``few_shot_k`` worked long-CoT examples, kept by
  the same rules;
- rows written by people, as R1's annotators wrote and post-processed some: ``written_data`` (a JSONL of
  {prompt, completion} rows, e.g. a public long-CoT set) and, for synthetic tasks, ``written_rows`` rows written by
  the task's generator in ``few_shot_style``. Both are added as they are, unfiltered.

It writes ``<stage>/data.jsonl`` (rows with provenance) and ``<stage>/stats.json``, its output data file: a later
``sft`` stage reads it with ``data: <this stage's name>`` and sets ``init:`` to the model it fine-tunes.
"""

from __future__ import annotations

import random

from r1lab.data.cold_start import cold_start_from_outputs, few_shot_long_cot
from r1lab.data.jsonl import read_sft_examples
from r1lab.data.rejection import rejection_sample
from r1lab.generation import sampling_params
from r1lab.stage import Stage, StageOutput
from r1lab.stage_configs import ColdStartConfig
from r1lab.templates import PromptTemplate


def run_stage(cfg: ColdStartConfig, stage: Stage) -> StageOutput:
    """Write the cold-start data set and its stats."""
    params = sampling_params(cfg, stage.run.seed, stage.sample_progress)
    stats: dict = {}
    rows: list[dict] = []
    if cfg.num_prompts:
        policy = stage.load_policy(trainable=False)
        examples = stage.task.examples("train", cfg.num_prompts, seed=stage.run.seed)
        kept, stats["from_outputs"] = rejection_sample(
            stage.generator(policy), stage.task, stage.template, examples,
            cfg.samples_per_prompt, params, filters=cfg.filters,
            provenance={"checkpoint": str(stage.init), "stage": stage.name})
        rows += cold_start_from_outputs(kept)
        stats["from_outputs"]["rewritten"] = len(rows)
    if cfg.few_shot_prompts:
        shot_model = stage.load_model(cfg.few_shot_from)
        template = PromptTemplate(stage.run.template, shot_model.tokenizer)
        # prompts after the ones sampled above (a different seed draws a different set)
        examples = stage.task.examples("train", cfg.few_shot_prompts, seed=stage.run.seed + 1)
        shots, stats["few_shot"] = few_shot_long_cot(
            stage.generator(shot_model), stage.task, template, examples, cfg.few_shot_samples,
            params, k=cfg.few_shot_k, style=cfg.few_shot_style, filters=cfg.filters,
            provenance={"checkpoint": shot_model.init_checkpoint, "stage": stage.name}, seed=stage.run.seed)
        rows += shots
    if cfg.written_rows:
        rng = random.Random(stage.run.seed)
        written = stage.task.examples("train", cfg.written_rows, seed=stage.run.seed + 2)
        rows += [{"prompt": ex["prompt"], "completion": stage.task.corpus_document(ex, rng, cfg.few_shot_style),
                  "answer": ex.get("answer"), "source": {"generator": stage.task.name, "style": cfg.few_shot_style}}
                 for ex in written]
        stats["written"] = len(written)
    if cfg.written_data:
        written = read_sft_examples(cfg.written_data)
        rows += [{"prompt": ex["prompt"], "completion": ex["completion"], "source": {"file": ex["where"]}}
                 for ex in written]
        stats["written_data"] = len(written)
    if not rows:
        raise RuntimeError(f"stage '{stage.name}': no cold-start row survived (stats: {stats}); sample more prompts, "
                           f"or loosen the filters")
    output = stage.write_data(rows, stats, cfg.output)
    stage.log(f"{len(rows)} cold-start rows -> {output.data_file} ({stats})")
    return output
