"""Prompt templates: the R1-Zero template for base models, the tokenizer's chat template for instruct models.

Rendering is the one step every prompt takes before generation, so it is where a prompt the tiny model cannot read
(a character outside its alphabet) is named, instead of failing inside the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1lab.config import doc
from r1lab.vocabulary import R1_ZERO_PREFIX, R1_ZERO_SUFFIX, THINK_OPEN, check_tiny_characters

R1_INSTRUCTION = (
    "Think about the reasoning process first, inside <think> </think> tags, then give the final answer inside "
    "<answer> </answer> tags."
)


@dataclass
class TemplateConfig:
    kind: Literal["r1_zero", "chat", "plain"] = doc(
        "r1_zero", "r1_zero: the DeepSeek-R1-Zero template (base models); chat: the tokenizer's chat template with "
        "the R1 instruction (instruct models); plain: the prompt as is.")
    prefill_think: bool = doc(False, "Start the assistant's turn with '<think>' (some R1-Zero reproductions do).")
    system_prompt: str = doc("", "System message for the chat template (empty: none).")


class PromptTemplate:
    """Turns a task prompt into the model's input text. ``prefill`` is the part of the response the prompt already
    contains; the trainer prepends it to completions before scoring them."""

    def __init__(self, cfg: TemplateConfig, tokenizer=None):
        self.cfg = cfg
        self.tokenizer = tokenizer
        if cfg.kind == "chat" and (tokenizer is None or not getattr(tokenizer, "chat_template", None)):
            raise ValueError("template.kind=chat needs a tokenizer with a chat template; use r1_zero for base models")

    @property
    def prefill(self) -> str:
        return THINK_OPEN if self.cfg.prefill_think else ""

    def render(self, prompt: str, *, with_prefill: bool = True) -> str:
        """The model's input text for ``prompt``; ``UnknownCharactersError`` when the tiny model cannot read it."""
        check_tiny_characters(self.tokenizer, prompt, "the prompt")
        if self.cfg.kind == "r1_zero":
            text = R1_ZERO_PREFIX + prompt + R1_ZERO_SUFFIX
        elif self.cfg.kind == "chat":
            messages = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
            messages.append({"role": "user", "content": f"{prompt}\n{R1_INSTRUCTION}"})
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = prompt
        if with_prefill and self.prefill:
            text += " " + self.prefill if self.cfg.kind == "r1_zero" else self.prefill
        return text

    def corpus_text(self, prompt: str, response: str) -> str:
        """Prompt and full response as one pretraining / SFT document (without EOS)."""
        separator = " " if self.cfg.kind == "r1_zero" else ""
        return self.render(prompt, with_prefill=False) + separator + response
