"""Text to token ids exactly as the sampler sees them: the rendered prompt, then the completion and EOS.

Shared by every trainer on a fixed data set (SFT, DPO, reward model) and by reward-model inference, so that a
completion is tokenized the same way whether it is learned from, scored, or generated.
"""

from __future__ import annotations

# (prompt token ids, completion token ids ending with EOS)
Encoded = tuple[list[int], list[int]]
# (prompt ids, chosen completion ids + EOS, rejected completion ids + EOS)
EncodedPair = tuple[list[int], list[int], list[int]]


def split_response(template, prompt: str, response: str) -> tuple[str, str]:
    """(prompt text, completion text) with the boundary where generation puts it.

    The prompt text is ``template.render(prompt)``, with the ``<think>`` prefill when the template has one; a response
    that starts with the prefill loses it (the model never generates it), one that does not is taken as what follows
    it. With the r1_zero template the single space after "Assistant:" belongs to the completion, as in the pretraining
    corpus (``PromptTemplate.corpus_text``) and in what the model generates.
    """
    prompt_text = template.render(prompt)
    if template.cfg.kind == "r1_zero":
        response = response.lstrip(" ")
    full = template.corpus_text(prompt, response)
    if full.startswith(prompt_text):
        return prompt_text, full[len(prompt_text):]
    return prompt_text, response


def encode_texts(tokenizer, prompt_texts: list[str], completion_texts: list[str]) -> list[Encoded]:
    """Tokenize prompts and completions apart (as the sampler sees them) and end every completion with EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a completion must learn where to stop")
    if not prompt_texts:
        return []
    prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    completions = tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
    return [(list(p), list(c) + [tokenizer.eos_token_id]) for p, c in zip(prompts, completions)]


def encode_sft_examples(tokenizer, template, examples: list[dict]) -> list[Encoded]:
    """SFT rows -> token ids. Chat rows: every turn before the last is the prompt (the tokenizer's chat template with
    the generation prompt), the last assistant turn is the completion."""
    prompt_texts, completion_texts = [], []
    for example in examples:
        if "messages" in example:
            prompt_texts.append(tokenizer.apply_chat_template(example["messages"][:-1], tokenize=False,
                                                              add_generation_prompt=True))
            completion_texts.append(example["messages"][-1]["content"])
        else:
            prompt_text, completion_text = split_response(template, example["prompt"], example["completion"])
            prompt_texts.append(prompt_text)
            completion_texts.append(completion_text)
    return encode_texts(tokenizer, prompt_texts, completion_texts)


def encode_pairs(tokenizer, template, pairs: list[dict]) -> list[EncodedPair]:
    """Preference rows -> token ids; both completions follow the same rendered prompt and end with EOS."""
    prompts = [template.render(x["prompt"]) for x in pairs]  # what split_response puts before every completion
    chosen = encode_texts(tokenizer, prompts, [split_response(template, x["prompt"], x["chosen"])[1] for x in pairs])
    rejected = encode_texts(tokenizer, prompts,
                            [split_response(template, x["prompt"], x["rejected"])[1] for x in pairs])
    return [(p, c, r) for (p, c), (_, r) in zip(chosen, rejected)]


def drop_too_long(encoded: list, rows: list[dict], max_length: int) -> tuple[list, list[str]]:
    """The examples or pairs whose prompt + longest completion fit in ``max_length`` tokens, and the places
    (file:line) of those dropped: longer rows are never truncated."""
    kept, dropped = [], []
    for item, row in zip(encoded, rows):
        if len(item[0]) + max(len(c) for c in item[1:]) <= max_length:
            kept.append(item)
        else:
            dropped.append(row.get("where", "?"))
    return kept, dropped
