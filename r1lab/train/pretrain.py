"""Pretraining the embedded tiny base model from scratch on a synthetic corpus.

The corpus mimics web text about the task: worked solutions, some with a human mistake, some untagged, some bare
answers. A model trained on it has partial skill and an imperfect format, like a real base model, so R1-Zero RL has
something to sharpen (the base pass rate should start around 0.1–0.6: RL sharpens what a model can already sometimes do,
DeepSeek-R1 arXiv 2501.12948 §4).

The result is cached by a hash of everything that determines it, so the demo and the tests build it once. One process
builds a given entry at a time (a lock per cache key: another run needing the same base waits, then reuses it); each
entry carries the sha256 of its files (``sha256.json``), checked before it is reused, so a damaged entry is built
again; and the stage copies the entry into its own folder (``<run>/<stage>/model``), so a run keeps the base it
used whatever happens to the cache (README, "Locks and the run record").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Callable

import torch

from r1lab.checkpoint import atomic_dir
from r1lab.config import to_dict
from r1lab.dist import barrier, broadcast_from_main, share, sum_over_ranks, world
from r1lab.locks import wait_for_lock
from r1lab.models import build_tiny_model, build_tiny_tokenizer, count_parameters, save_weights, write_tokenizer
from r1lab.policy import OptimizerSettings, Policy, warmup_then_decay
from r1lab.stage import Stage, StageOutput
from r1lab.templates import PromptTemplate
from r1lab.stage_configs import PretrainConfig

log = logging.getLogger("r1lab")

CACHE_VERSION = 1  # bump when the corpus or model code changes what a given config produces
MANIFEST = "sha256.json"  # in a built base model: {"files": {relative path: sha256}} of every other file


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
             log_metrics=None, progress=None, copy_to: Path | None = None,
             warn: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> Path:
    """Build (or reuse from the cache) the tiny base model; returns its folder: ``copy_to`` when given (a copy of the
    cache entry, made while the entry is locked), else the cache entry. ``warn``: told when a damaged entry is
    built again; ``note``: told when the cached entry is reused, or when this process waits for another one building
    it."""
    cache_root = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    key = cache_key(cfg, task_spec, template_spec, seed)
    cached = cache_root / "tiny-base" / key
    waiting = f"waiting for another process that is building the same base model ({cached})"
    main = world().is_main  # under torchrun: rank 0 holds the lock, decides and writes; every rank trains
    lock = (wait_for_lock(cached.with_name(f"{key}.lock"), on_wait=lambda: (note or log.info)(waiting)) if main
            else contextlib.nullcontext())
    with lock:
        build = False
        if main:
            damage = model_folder_damage(cached) if cached.exists() else None
            if cfg.cache and cached.exists() and damage is None:  # said on the terminal: minutes of training skipped
                (note or log.info)(f"the tiny base model from the cache, {cached} (built before with the same "
                                   f"settings; cache: false, or deleting it, builds it again)")
            else:
                if cfg.cache and damage is not None:
                    (warn or log.warning)(f"the cached base model {cached} {damage}; building it again")
                build = True
        if broadcast_from_main(build):
            build_base_model(cfg, task=task, template=template, seed=seed, key=key, folder=cached,
                             log_metrics=log_metrics, progress=progress, write=main)
        barrier()  # the other ranks read what rank 0 wrote
        if copy_to is None:
            return cached
        copy_model_folder(cached, Path(copy_to))
    return Path(copy_to)


def build_base_model(cfg: PretrainConfig, *, task, template, seed: int, key: str, folder: Path, log_metrics=None,
                     progress=None, write: bool = True) -> None:
    """Pretrain the tiny base model from scratch and save it to ``folder`` (atomically, with its ``sha256.json``;
    not when ``write`` is False: the other ranks under torchrun, each training on its share of every batch)."""
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
        first, stop = share(len(batch))  # under torchrun: this rank's rows; the loss is its share of the mean
        policy.zero_grad()
        loss = torch.zeros(())
        if stop > first:
            loss = model(input_ids=batch[first:stop], labels=batch[first:stop]).loss * ((stop - first) / len(batch))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretraining loss became {loss.item()} at step {step}; lower stages.*.lr")
            loss.backward()
        loss = torch.tensor(sum_over_ranks(loss.item()))
        policy.optimizer_step()
        policy.schedule_step()
        if log_metrics and (step % 50 == 0 or step == cfg.steps - 1):
            log_metrics(step, {"loss": round(loss.item(), 4), "lr": policy.learning_rates()["lr"],
                               "elapsed_seconds": round(time.time() - start, 1)})
        if progress:  # every step: the console prints a line every few seconds, with the rate and time left
            progress(step + 1, cfg.steps, f"loss {loss.item():.3f}")
    if not write:
        return
    with atomic_dir(folder) as tmp:  # the manifest is in the folder from the moment it has its name
        save_weights(model, tmp)
        write_tokenizer(tokenizer, tmp)
        (tmp / "r1lab.json").write_text(json.dumps({"built_by": "r1lab pretrain", "cache_key": key,
                                                    "seconds": round(time.time() - start, 1)}, indent=2))
        (tmp / MANIFEST).write_text(json.dumps({"files": file_hashes(tmp)}, indent=2, sort_keys=True))


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file in ``folder`` (subfolders too) but the manifest, by path relative to it."""
    hashes = {}
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            hashes[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return hashes


def model_folder_damage(folder: Path) -> str | None:
    """None when every file ``sha256.json`` lists is there with its hash (model.safetensors among them), else what
    is wrong, in words."""
    try:
        listed = json.loads((folder / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"has no readable {MANIFEST} (built before r1lab kept one, or damaged), so it cannot be verified"
    if "model.safetensors" not in listed:
        return f"lists no model.safetensors in its {MANIFEST}"
    found = file_hashes(folder)
    for name, digest in listed.items():
        if name not in found:
            return f"has lost {name}"
        if found[name] != digest:
            return f"has a damaged {name} (its sha256 differs from the one written when it was built)"
    return None


def copy_model_folder(source: Path, target: Path) -> None:
    """A copy of model folder ``source`` at ``target``, renamed into place (a kill leaves no half copy)."""
    with atomic_dir(target) as tmp:
        for path in sorted(source.rglob("*")):
            if path.is_file():
                (tmp / path.relative_to(source)).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, tmp / path.relative_to(source))


def run_stage(cfg: PretrainConfig, stage: Stage) -> StageOutput:
    """Pipeline entry point: build (or reuse) the tiny base for the run's task and template; the stage's output is
    its copy in ``<stage>/model``, so the run folder holds the base model it used."""
    return StageOutput(model=str(pretrain(
        cfg, task=stage.task, task_spec=to_dict(stage.run.task), template=PromptTemplate(stage.run.template),
        template_spec=to_dict(stage.run.template), seed=stage.run.seed, log_metrics=stage.log_metrics,
        progress=stage.progress, copy_to=stage.folder / "model", warn=stage.warn, note=stage.log)))
