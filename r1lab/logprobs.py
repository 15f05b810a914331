"""The one place where logits become per-token logprobs and entropy.

Logits are never materialised as a full (B, T, V) fp32 tensor, and only completion positions reach the LM head: the
decoder's final hidden states are projected through the LM head in chunks of time steps, each chunk recomputed in the backward pass (activation checkpointing), so memory is
O(B × chunk × V) instead of O(B × T × V). With Qwen2.5's vocabulary and 64 × 1,024 completion tokens the full tensor
would need 37 GiB (65,536 × 151,936 × 4 bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


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
                        with_entropy: bool = False,
                        max_chunk_elements: int = 2**26) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token logprobs of the completion tokens, (B, C); entropy (B, C) too when ``with_entropy`` (no grad).

    ``chunk_size``: time steps per LM-head chunk; by default as many as keep one chunk's logits under
    ``max_chunk_elements`` (2^26 fp32 values = 256 MiB). Position ids come from the attention mask so that left
    padding does not shift positions. A model sharded with FSDP2 (``r1lab.fsdp``) runs the same computation as
    one of its forward methods, so that its root weights are gathered for it.
    """
    run = getattr(model, "r1lab_completion_logprobs", None) or (
        lambda *args, **kwargs: decoder_then_head_logprobs(model, *args, **kwargs))
    return run(batch, chunk_size=chunk_size, temperature=temperature, with_entropy=with_entropy,
               max_chunk_elements=max_chunk_elements)


def decoder_then_head_logprobs(model, batch: Batch, *, chunk_size: int | None, temperature: float,
                               with_entropy: bool, max_chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``completion_logprobs``' computation: the decoder, then the LM head on completion positions in chunks."""
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    # The decoder alone (no LM head, no other layer's hidden states kept): the head runs below, on completion
    # positions only, in chunks.
    out = model.get_decoder()(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                              position_ids=position_ids, use_cache=False)
    width_p = batch.prompt_width
    # Position t predicts token t + 1: completion token j is predicted from position P + j − 1.
    hidden = out.last_hidden_state[:, width_p - 1:-1]  # (B, C, H), after the final norm
    targets = batch.input_ids[:, width_p:]
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
