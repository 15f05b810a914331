"""Generation engines. The trainers only see the `Engine` interface; `TransformersEngine` is the default."""

from r1lab.engine.base import Engine, Generation, SamplingParams
from r1lab.engine.hf import TransformersEngine

__all__ = ["Engine", "Generation", "SamplingParams", "TransformersEngine", "make_engine"]


def make_engine(name: str, model, tokenizer, **options) -> Engine:
    """Build a generation engine by name ("transformers")."""
    if name in ("transformers", "hf"):
        return TransformersEngine(model, tokenizer, **options)
    raise ValueError(f"unknown generation engine '{name}'; choose one of: transformers")
