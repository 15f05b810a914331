"""The one place where logits become per-token logprobs and entropy.

Logits are never materialised as a full (B, T, V) fp32 tensor, and only completion positions reach the LM head: the
decoder's final hidden states are projected through the LM head in chunks of time steps, each chunk recomputed in the backward pass (activation checkpointing), so memory is
O(B × chunk × V) instead of O(B × T × V). With Qwen2.5's vocabulary and 64 × 1,024 completion tokens the full tensor
would need 37 GiB (65,536 × 151,936 × 4 bytes).

Rows that share their prompt (GRPO's G completions of one prompt, DPO's chosen and rejected answers) run that prompt
through the decoder once: its keys and values are copied to each of its rows, whose completions then attend to them
(as a decode step attends to its cache; the shared-prefix forward of Liu et al., "Prefix Grouper", arXiv 2506.05433).
A causal decoder's prompt positions do not depend on what follows them, so the logprobs are the ones a forward of
every full row gives, and so are the gradients (each shared prompt's gets the sum over its rows). With G = 8, 9-token
prompts and 32-token completions this is a fifth fewer tokens through the decoder (a few percent less time, since
the second decoder call has fixed costs of its own); with long prompts most of them (``bench/shared_prompts.py``).
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class Batch:
    """Prompt+completion token batch. Prompts are left-padded to ``prompt_width``, completions right-padded.

    input_ids, attention_mask: (B, P + C); completion_mask: (B, C), 1 on completion tokens that count in the loss.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_width: int

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.completion_mask.to(device),
                     self.prompt_width)

    def select(self, index) -> "Batch":
        return Batch(self.input_ids[index], self.attention_mask[index], self.completion_mask[index], self.prompt_width)


def make_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> Batch:
    """Pad prompts on the left and completions on the right into one (B, P + C) batch."""
    width_p = max(len(p) for p in prompt_ids)
    width_c = max(1, max(len(c) for c in completion_ids))
    rows, attention, completion_mask = [], [], []
    for p, c in zip(prompt_ids, completion_ids):
        rows.append([pad_id] * (width_p - len(p)) + p + c + [pad_id] * (width_c - len(c)))
        attention.append([0] * (width_p - len(p)) + [1] * (len(p) + len(c)) + [0] * (width_c - len(c)))
        completion_mask.append([1] * len(c) + [0] * (width_c - len(c)))
    return Batch(torch.tensor(rows), torch.tensor(attention), torch.tensor(completion_mask, dtype=torch.float32),
                 width_p)


def _chunk_logprobs(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                    temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    if temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logprobs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logprobs, logp_all


def completion_logprobs(model, batch: Batch, *, chunk_size: int | None = None, temperature: float = 1.0,
                        with_entropy: bool = False, max_chunk_elements: int = 2**26,
                        share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs of the completion tokens, (B, C); entropy (B, C) too when ``with_entropy`` (no grad).

    ``chunk_size``: time steps per LM-head chunk; by default as many as keep one chunk's logits under
    ``max_chunk_elements`` (2^26 fp32 values = 256 MiB). Position ids come from the attention mask so that left
    padding does not shift positions. ``share_prompts``: run each distinct prompt of the batch once
    (``shared_prompt_rows`` says when that applies); False: every row whole. A model sharded with FSDP2
    (``r1lab.fsdp``) runs the same computation as one of its forward methods, so that its root weights are
    gathered for it.
    """
    run = getattr(model, "r1lab_completion_logprobs", None) or (
        lambda *args, **kwargs: decoder_then_head_logprobs(model, *args, **kwargs))
    return run(batch, chunk_size=chunk_size, temperature=temperature, with_entropy=with_entropy,
               max_chunk_elements=max_chunk_elements, share_prompts=share_prompts)


def mask_positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids from an attention mask (…, T): each real token counts from 0, so left padding shifts nothing
    (padding positions read 0)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def cache_keyword(module) -> str:
    """The name under which ``module``'s forward takes a KV cache: transformers 5.24 renamed ``past_key_values`` to
    ``cache`` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def shared_prompt_rows(decoder, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(the distinct prompts' ids (U, P), their attention mask (U, P), each row's prompt (B,)) when some rows share
    a prompt and the decoder can take their keys and values as a cache; None when each row must run whole: no
    prompt repeats, activation checkpointing (a recomputed layer would write the cache twice), a cache layout other
    than plain full-attention layers (sliding windows, recurrent states), or ``R1LAB_SHARE_PROMPTS=0`` in the
    environment (to rule the shared forward out when looking for a bug)."""
    width = batch.prompt_width
    if width == 0 or batch.input_ids.shape[0] < 2 or os.environ.get("R1LAB_SHARE_PROMPTS", "1").strip() == "0":
        return None
    prompts = torch.cat([batch.input_ids[:, :width], batch.attention_mask[:, :width].to(batch.input_ids.dtype)], 1)
    distinct, row_prompt = torch.unique(prompts, dim=0, return_inverse=True)
    if distinct.shape[0] == prompts.shape[0]:
        return None
    if any(getattr(module, "gradient_checkpointing", False) for module in decoder.modules()):
        return None
    config = getattr(decoder, "config", None)
    if config is None or not all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers):
        return None
    return distinct[:, :width], distinct[:, width:].to(batch.attention_mask.dtype), row_prompt


def completion_hidden(decoder, batch: Batch, share_prompts: bool = True) -> torch.Tensor:
    """The decoder's final hidden states (B, C, H) at the positions that predict the completion tokens: position
    t predicts token t + 1, so completion token j is predicted from position P + j − 1. What the LM head reads
    here, and a value model's head (``r1lab.value_model``). ``share_prompts``: each distinct prompt once
    (``shared_prompt_rows``)."""
    width = batch.prompt_width
    position_ids = mask_positions(batch.attention_mask)
    shared = shared_prompt_rows(decoder, batch) if share_prompts else None
    if shared is None:
        # The decoder alone (no LM head, no other layer's hidden states kept): the head runs on completion
        # positions only, in chunks.
        out = decoder(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=position_ids,
                      use_cache=False)
        return out.last_hidden_state[:, width - 1:-1]
    prompt_ids, prompt_mask, row_prompt = shared
    keyword = cache_keyword(decoder)
    cache = DynamicCache(config=decoder.config)
    prompts = decoder(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True,
                      position_ids=mask_positions(prompt_mask), **{keyword: cache})
    # each row gets its prompt's keys and values (a copy that autograd routes back to the one prompt forward)
    rows_cache = DynamicCache(ddp_cache_data=[(layer.keys[row_prompt], layer.values[row_prompt])
                                              for layer in cache.layers], config=decoder.config)
    out = decoder(input_ids=batch.input_ids[:, width:], attention_mask=batch.attention_mask, use_cache=True,
                  position_ids=position_ids[:, width:], **{keyword: rows_cache})
    # prompts are left-padded: their last column is the position that predicts the first completion token
    return torch.cat([prompts.last_hidden_state[row_prompt, -1:], out.last_hidden_state[:, :-1]], dim=1)


def decoder_then_head_logprobs(model, batch: Batch, *, chunk_size: int | None, temperature: float,
                               with_entropy: bool, max_chunk_elements: int,
                               share_prompts: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``completion_logprobs``' computation: the decoder, then the LM head on completion positions in chunks."""
    hidden = completion_hidden(model.get_decoder(), batch, share_prompts)  # (B, C, H), after the final norm
    targets = batch.input_ids[:, batch.prompt_width:]
    head = model.get_output_embeddings()
    if chunk_size is None:
        chunk_size = max(1, max_chunk_elements // (targets.shape[0] * head.weight.shape[0]))
    grad = torch.is_grad_enabled()
    logprob_chunks, entropy_chunks = [], []
    for start in range(0, targets.shape[1], chunk_size):
        h, y = hidden[:, start:start + chunk_size], targets[:, start:start + chunk_size]
        if grad:  # recompute this chunk's logits in backward instead of keeping them
            logprobs = checkpoint(lambda a, b: _chunk_logprobs(head, a, b, temperature)[0], h, y,
                                  use_reentrant=False)
            logp_all = None
        else:
            logprobs, logp_all = _chunk_logprobs(head, h, y, temperature)
        logprob_chunks.append(logprobs)
        if with_entropy:
            with torch.no_grad():
                if logp_all is None:
                    logp_all = _chunk_logprobs(head, h.detach(), y, temperature)[1]
                entropy_chunks.append(-(logp_all.exp() * logp_all).sum(-1))
    logprobs = torch.cat(logprob_chunks, dim=1)
    entropy = torch.cat(entropy_chunks, dim=1) if with_entropy else None
    return logprobs, entropy
