"""Generation engines. The trainers only see the `Engine` interface.

``auto`` (the default) samples with r1lab's own engine (``FastEngine``: KV cache in slots, shared prompt prefill,
sampling on the device) with its compact forward when the model's architecture is one it knows (Llama / Qwen2 /
Qwen3 / Mistral, the tiny model) and with the model's own forward over the same slots otherwise, saying why (and
with ``generate`` if even that fails); ``fast`` insists on the compact forward (an error names what it cannot run);
``transformers`` samples with ``TransformersEngine`` (``generate``).
"""

import logging

from r1lab.engine.base import Engine, Generation, SamplingParams
from r1lab.engine.fast import FastEngine, unsupported_reason
from r1lab.engine.hf import TransformersEngine

__all__ = ["Engine", "FastEngine", "Generation", "SamplingParams", "TransformersEngine", "make_engine",
           "unsupported_reason"]

ENGINE_NAMES = ("auto", "fast", "transformers", "hf")
log = logging.getLogger("r1lab")
_told: set[str] = set()  # fallback reasons already logged (one line per reason, not one per stage)


def make_engine(name: str, model, tokenizer, **options) -> Engine:
    """Build a generation engine by name (``ENGINE_NAMES``)."""
    options = {k: v for k, v in options.items() if v is not None}
    if name in ("transformers", "hf"):
        return TransformersEngine(model, tokenizer, **options)
    if name not in ("auto", "fast"):
        raise ValueError(f"unknown generation engine '{name}'; choose one of: {', '.join(ENGINE_NAMES)}")
    reason = unsupported_reason(model)
    if reason is None:
        return FastEngine(model, tokenizer, **options)
    if name == "fast":
        raise ValueError(f"engine 'fast' cannot run this model: {reason}; use engine: auto (the model's own forward "
                         f"in r1lab's slot engine) or engine: transformers")
    if reason not in _told:
        _told.add(reason)
        log.info(f"engine auto: the model's own forward in r1lab's slot engine ({reason})")
    return FastEngine(model, tokenizer, forward="hf", **options)
