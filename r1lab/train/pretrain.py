"""Pretraining the embedded tiny base model from scratch on a synthetic corpus.

The corpus mimics web text about the task: worked solutions, some with a human mistake, some untagged, some bare
answers. A model trained on it has partial skill and an imperfect format, like a real base model, so R1-Zero RL has
something to sharpen (the base pass rate should start around 0.1–0.6: RL sharpens what a model can already sometimes do,
DeepSeek-R1 arXiv 2501.12948 §4).

The result is cached by a hash of everything that determines it, so the demo and the tests build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lab.config import doc, to_dict
from r1lab.models import build_tiny_model, build_tiny_tokenizer, count_parameters, save_model
from r1lab.policy import OptimizerSettings, Policy, warmup_then_decay
from r1lab.stage import Stage, StageOutput
from r1lab.templates import PromptTemplate

log = logging.getLogger("r1lab")

CACHE_VERSION = 1  # bump when the corpus or model code changes what a given config produces


@dataclass
class PretrainConfig:
    kind: str = doc("pretrain", "Stage kind: build the embedded tiny base model from scratch.")
    hidden_size: int = doc(128, "Transformer width.")
    num_layers: int = doc(4, "Transformer layers.")
    num_heads: int = doc(4, "Attention heads (key/value heads equal).")
    intermediate_size: int = doc(512, "MLP width.")
    styles: dict[str, float] = doc({}, "Corpus mixture: task corpus style -> weight (empty: the task's default).")
    corpus_problems: int = doc(20000, "Distinct training problems the corpus is written about.")
    steps: int = doc(1500, "Optimizer steps.")
    batch_size: int = doc(32, "Sequences per step.")
    block_size: int = doc(256, "Tokens per packed training sequence.")
    lr: float = doc(3e-3, "Peak learning rate (AdamW), cosine decay to 10% after warmup.")
    warmup_steps: int = doc(50, "Linear warmup steps.")
    weight_decay: float = doc(0.01, "AdamW weight decay.")
    adam_betas: list[float] = doc([0.9, 0.95], "AdamW β1, β2 (0.95: the usual choice for pretraining).")
    cache: bool = doc(True, "Reuse a base model already built with the same settings (in cache_dir).")
    cache_dir: str = doc("", "Where built base models are kept (empty: $R1LAB_CACHE or ~/.cache/r1lab).")
    eval: bool = doc(True, "Evaluate the base model on the held-out split after building it.")


def default_cache_dir() -> Path:
    return Path(os.environ.get("R1LAB_CACHE", Path.home() / ".cache" / "r1lab"))


def render_document(template, task, example: dict, rng: random.Random, style: str, eos: str) -> str:
    """A corpus document: the templated prompt followed by a response in the given style."""
    return template.corpus_text(example["prompt"], task.corpus_document(example, rng, style)) + eos


def corpus_styles(task, cfg: PretrainConfig) -> dict[str, float]:
    return cfg.styles or getattr(task, "default_corpus_styles", None) or {s: 1.0 for s in task.styles}


def tokenizer_words(task, cfg: PretrainConfig) -> list[str] | None:
    """Whole-word tokens the task asks for; a task may ask only when its word styles are in the corpus (so that,
    e.g., "so" stays three characters in a corpus that never uses the reasoning words)."""
    words = getattr(task, "extra_tokens", None)
    needs = getattr(task, "word_styles", None)
    if words and needs is not None and not any(style in needs for style in corpus_styles(task, cfg)):
        return None
    return words


def build_corpus(task, template, cfg: PretrainConfig, seed: int, eos: str) -> list[str]:
    rng = random.Random(seed)
    styles = corpus_styles(task, cfg)
    unknown = [s for s in styles if s not in task.styles]
    if unknown:
        raise ValueError(f"corpus style '{unknown[0]}' is not one of task {task.name}'s styles {list(task.styles)}")
    names, weights = list(styles), list(styles.values())
    problems = task.examples("train", cfg.corpus_problems, seed=seed)
    return [render_document(template, task, ex, rng, rng.choices(names, weights)[0], eos) for ex in problems]


def pack(token_lists: list[list[int]], block_size: int, rng: random.Random) -> torch.Tensor:
    """Concatenate shuffled documents and cut them into (N, block_size) blocks (GPT-style packing)."""
    order = list(range(len(token_lists)))
    rng.shuffle(order)
    stream = [t for i in order for t in token_lists[i]]
    n = len(stream) // block_size
    return torch.tensor(stream[: n * block_size]).view(n, block_size)


def cache_key(cfg: PretrainConfig, task_spec: dict, template_spec: dict, seed: int) -> str:
    spec = {"v": CACHE_VERSION, "cfg": {k: v for k, v in to_dict(cfg).items() if k not in ("cache", "cache_dir",
                                                                                            "eval")},
            "task": task_spec, "template": template_spec, "seed": seed}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def pretrain(cfg: PretrainConfig, *, task, task_spec: dict, template, template_spec: dict, seed: int,
             log_metrics=None, progress=None) -> Path:
    """Build (or reuse from the cache) the tiny base model; returns the checkpoint folder."""
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    key = cache_key(cfg, task_spec, template_spec, seed)
    cached = cache_root / "tiny-base" / key
    if cfg.cache and (cached / "config.json").is_file():
        log.info("reusing the cached tiny base model %s", cached)
        return cached

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(tokenizer_words(task, cfg))
    model = build_tiny_model(tokenizer, hidden_size=cfg.hidden_size, num_layers=cfg.num_layers,
                             num_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                             max_positions=max(512, cfg.block_size), seed=seed)
    log.info("pretraining a %.2fM-parameter tiny base model on a synthetic %s corpus",
             count_parameters(model) / 1e6, task.name)
    documents = build_corpus(task, template, cfg, seed, tokenizer.eos_token)
    token_lists = tokenizer(documents, add_special_tokens=False)["input_ids"]
    rng = random.Random(seed)
    blocks = pack(token_lists, cfg.block_size, rng)
    policy = Policy(model, tokenizer, torch.device("cpu"))
    policy.configure_optimizer(OptimizerSettings(lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.weight_decay,
                                                 max_grad_norm=1.0),
                               warmup_then_decay(cfg.steps, cfg.warmup_steps, "cosine"))
    model.train()
    start = time.time()
    order = torch.randperm(len(blocks))
    cursor = 0
    for step in range(cfg.steps):
        if cursor + cfg.batch_size > len(order):
            order, cursor = torch.randperm(len(blocks)), 0
        batch = blocks[order[cursor:cursor + cfg.batch_size]]
        cursor += cfg.batch_size
        loss = model(input_ids=batch, labels=batch).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"pretraining loss became {loss.item()} at step {step}; lower stages.*.lr")
        policy.zero_grad()
        loss.backward()
        policy.optimizer_step()
        policy.schedule_step()
        if step % 50 == 0 or step == cfg.steps - 1:
            if log_metrics:
                log_metrics(step, {"loss": round(loss.item(), 4), "lr": policy.learning_rates()["lr"],
                                   "elapsed_seconds": round(time.time() - start, 1)})
            if progress:
                progress(step + 1, cfg.steps, f"loss {loss.item():.3f}")
    save_model(model, tokenizer, cached, extra={"built_by": "r1lab pretrain", "cache_key": key,
                                                "seconds": round(time.time() - start, 1)})
    return cached


def run_stage(cfg: PretrainConfig, stage: Stage) -> StageOutput:
    """Pipeline entry point: build (or reuse) the tiny base for the run's task and template."""
    return StageOutput(model=str(pretrain(
        cfg, task=stage.task, task_spec=to_dict(stage.run.task), template=PromptTemplate(stage.run.template),
        template_spec=to_dict(stage.run.template), seed=stage.run.seed, log_metrics=stage.log_metrics,
        progress=stage.progress)))
