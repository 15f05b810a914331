"""Generation with ``transformers`` ``generate``: works for any causal LM, on CPU or GPU.

Every ``Generation`` carries the logprob of each token under the distribution it was sampled from (after
temperature, top-k and top-p), recorded during sampling: the sampler's own numbers, which a trainer can compare with
its forward pass (they differ by the truncation of top-p/top-k, by numerics, and by anything an engine gets wrong).
"""

from __future__ import annotations

import contextlib

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper,
                          TopPLogitsWarper)

from r1lab.engine.base import Generation, SamplingParams


class _SampledLogprobs(LogitsProcessor):
    """Placed after the warpers, it sees the scores each token is sampled from; the token itself appears in
    ``input_ids`` at the next call, so one step's log-softmax is kept until then (O(B × V) memory, not O(B × T × V))."""

    def __init__(self):
        self.previous: torch.Tensor | None = None  # (B, V) log-softmax of the last step's scores
        self.chosen: list[torch.Tensor] = []  # per generated token: (B,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.chosen.append(self.previous.gather(1, tokens[:, None]).squeeze(1))
            self.previous = None


class TransformersEngine:
    """Samples with the policy itself (no weight copy), batching prompts × n up to ``batch_size`` sequences."""

    def __init__(self, model, tokenizer, *, batch_size: int = 256, dtype: torch.dtype | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.dtype = dtype  # compute under autocast in this dtype (bf16-mixed); None: the weights' dtype

    def sync_weights(self) -> None:  # the engine samples from the live policy: nothing to copy
        pass

    @torch.no_grad()
    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        tokenizer, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        flat_prompts = [p for p in prompts for _ in range(n)]
        eos_id = tokenizer.eos_token_id
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
        # One generator per call: the same seed gives the same completions, whatever ran before.
        generator_seed = params.seed
        sampling = params.temperature > 0
        results: list[Generation] = []
        for start in range(0, len(flat_prompts), self.batch_size):
            chunk = flat_prompts[start:start + self.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(generator_seed + start)
            if device.type == "cuda":
                torch.cuda.manual_seed_all(generator_seed + start)
            # The warpers are ours, in transformers' own order (temperature, top-k, top-p), so that the recorder
            # after them sees what is sampled from; transformers adds none of its own (1.0 / 0 / 1.0 below).
            warpers = []
            if sampling and params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if sampling and params.top_k:
                warpers.append(TopKLogitsWarper(top_k=params.top_k))
            if sampling and params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p=params.top_p))
            recorder = _SampledLogprobs()
            precision = (torch.autocast(device.type, dtype=self.dtype) if self.dtype is not None
                         else contextlib.nullcontext())
            with precision:
                out = model.generate(
                    **enc,
                    do_sample=sampling,
                    temperature=1.0 if sampling else None,
                    top_p=1.0 if sampling else None,
                    top_k=0 if sampling else None,
                    logits_processor=LogitsProcessorList([*warpers, recorder]),
                    max_new_tokens=params.max_new_tokens,
                    eos_token_id=eos_id,
                    pad_token_id=pad_id,
                )
            prompt_width = enc["input_ids"].shape[1]
            if out.shape[1] > prompt_width:
                recorder.take(out[:, -1])
            token_logprobs = torch.stack(recorder.chosen, 1).tolist() if recorder.chosen else [[] for _ in chunk]
            for row in range(len(chunk)):
                prompt_ids = enc["input_ids"][row][enc["attention_mask"][row].bool()].tolist()
                new_tokens = out[row, prompt_width:].tolist()
                if eos_id in new_tokens:
                    completion_ids = new_tokens[: new_tokens.index(eos_id) + 1]
                    truncated = False
                else:
                    completion_ids = new_tokens
                    truncated = True
                text_ids = completion_ids[:-1] if not truncated else completion_ids
                text = tokenizer.decode(text_ids, skip_special_tokens=True)
                results.append(Generation(prompt_ids, completion_ids, text, truncated,
                                          logprobs=token_logprobs[row][:len(completion_ids)]))
            params.report(len(results), len(flat_prompts))
        if was_training:
            model.train()
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]
