"""Text to token ids exactly as the sampler sees them: the rendered prompt, then the completion and EOS.

Shared by every trainer on a fixed data set (SFT, DPO, reward model) and by reward-model inference, so that a
completion is tokenized the same way whether it is learned from, scored, or generated.

Text the tiny model cannot read is named with its file and line before tokenizing (``check_tiny_characters``), and
``warn_if_prompts_exceed_context`` tells a user once when rendered prompts do not fit the model's context.
"""

from __future__ import annotations

import logging

from r1lab.models import check_tiny_characters, is_tiny_tokenizer

logger = logging.getLogger("r1lab")

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


def _check_row_characters(tokenizer, row: dict, fields: tuple[str, ...]) -> None:
    """The tiny tokenizer's check of a data row's text fields, naming the row's file and line."""
    if not is_tiny_tokenizer(tokenizer):
        return
    where = f"{row['where']}: " if row.get("where") else ""
    for name in fields:
        if isinstance(row.get(name), str):
            check_tiny_characters(tokenizer, row[name], f"{where}the {name}")
    for i, message in enumerate(row.get("messages") or []):
        check_tiny_characters(tokenizer, message["content"], f"{where}messages[{i}]")


def encode_texts(tokenizer, prompt_texts: list[str], completion_texts: list[str]) -> list[Encoded]:
    """Tokenize prompts and completions apart (as the sampler sees them) and end every completion with EOS."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token: a completion must learn where to stop")
    if not prompt_texts:
        return []
    if is_tiny_tokenizer(tokenizer):
        for what, texts in (("a prompt", prompt_texts), ("a completion", completion_texts)):
            for text in texts:
                check_tiny_characters(tokenizer, text, what)
    prompts = tokenizer(prompt_texts, add_special_tokens=False)["input_ids"]
    completions = tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
    return [(list(p), list(c) + [tokenizer.eos_token_id]) for p, c in zip(prompts, completions)]


def encode_sft_examples(tokenizer, template, examples: list[dict]) -> list[Encoded]:
    """SFT rows -> token ids. Chat rows: every turn before the last is the prompt (the tokenizer's chat template with
    the generation prompt), the last assistant turn is the completion."""
    prompt_texts, completion_texts = [], []
    for example in examples:
        _check_row_characters(tokenizer, example, ("prompt", "completion"))
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
    for pair in pairs:
        _check_row_characters(tokenizer, pair, ("prompt", "chosen", "rejected"))
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


def context_length(model) -> int | None:
    """The longest sequence a model's positions cover (``config.max_position_embeddings``), None when unknown."""
    value = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return value if isinstance(value, int) and value > 0 else None


_warned_contexts: set[tuple[str, int]] = set()


def warn_if_prompts_exceed_context(tokenizer, max_positions: int | None, prompt_texts: list[str],
                                   max_new_tokens: int = 0) -> str | None:
    """Warn (once per tokenizer and context size) when a rendered prompt, plus ``max_new_tokens``, is longer than the
    model's context ``max_positions`` (``context_length(model)``): positions past it were never trained, so the
    completion is garbage or cut short. Returns the warning, None when every prompt fits or it was given before.

    Called where prompts are rendered for generation (``r1lab.generation.sample_and_score``).
    """
    if not max_positions or not prompt_texts:
        return None
    key = (str(getattr(tokenizer, "name_or_path", "")) or str(id(tokenizer)), max_positions)
    if key in _warned_contexts:
        return None
    limit = max_positions - max(0, max_new_tokens)
    # A token covers at least one byte of text (a sentencepiece tokenizer may add one for the leading space), so
    # prompts with fewer bytes than the limit fit without being tokenized.
    suspects = [text for text in prompt_texts if len(text.encode("utf-8")) + 1 > limit]
    if not suspects:
        return None
    longest = max(len(ids) for ids in tokenizer(suspects, add_special_tokens=False)["input_ids"])
    if longest <= limit:
        return None
    _warned_contexts.add(key)
    if longest > max_positions:
        message = (f"a prompt of {longest} tokens is longer than the model's context (max_position_embeddings="
                   f"{max_positions}): the model never saw positions past it, so its completions are garbage; "
                   f"shorten the prompts (or drop the long ones) or use a model with a longer context")
    else:
        message = (f"a prompt of {longest} tokens plus max_new_tokens={max_new_tokens} does not fit the model's "
                   f"context (max_position_embeddings={max_positions}): completions past position {max_positions} "
                   f"are garbage; lower max_new_tokens or shorten the prompts")
    logger.warning(message)
    return message
