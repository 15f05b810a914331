"""Generation with ``transformers`` ``generate``: works for any causal LM, on CPU or GPU."""

from __future__ import annotations

import torch

from r1lab.engine.base import Generation, SamplingParams


class TransformersEngine:
    """Samples with the policy itself (no weight copy), batching prompts × n up to ``batch_size`` sequences."""

    def __init__(self, model, tokenizer, *, batch_size: int = 256):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

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
        results: list[Generation] = []
        for start in range(0, len(flat_prompts), self.batch_size):
            chunk = flat_prompts[start:start + self.batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            torch.manual_seed(generator_seed + start)
            if device.type == "cuda":
                torch.cuda.manual_seed_all(generator_seed + start)
            sampling = params.temperature > 0
            out = model.generate(
                **enc,
                do_sample=sampling,
                temperature=params.temperature if sampling else None,
                top_p=params.top_p if sampling else None,
                top_k=params.top_k if sampling else None,
                max_new_tokens=params.max_new_tokens,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            prompt_width = enc["input_ids"].shape[1]
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
                results.append(Generation(prompt_ids, completion_ids, text, truncated))
        if was_training:
            model.train()
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]
