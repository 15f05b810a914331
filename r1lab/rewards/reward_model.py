"""A trained reward model as a scorer, and as a reward function for RL (DeepSeek-R1 §2.3.4: reward models for
general, non-reasoning prompts).

A reward model is ``r1lab.value_model.ValueModel`` (a transformer backbone + ``Linear(hidden, 1)``); the score of
(prompt, completion) is the head on the hidden state after the completion's last token (its EOS). On disk, a reward
model folder holds the value model, the tokenizer and ``reward_model.json`` (the template its prompts were rendered
with); ``r1lab.train.reward_model`` trains and writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from r1lab.checkpoint import atomic_dir
from r1lab.config import from_dict, to_dict
from r1lab.encoding import encode_texts, split_response
from r1lab.logprobs import make_batch
from r1lab.models import load_tokenizer, resolve_device
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.value_model import ValueModel, load_value_model

INFO_FILE = "reward_model.json"


def sequence_scores(value_model: ValueModel, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                    device) -> torch.Tensor:
    """Reward (B,) of each prompt + completion (completions end with EOS): the head at the last completion token."""
    batch = make_batch(prompts, completions, pad_id).to(device)
    values = value_model.values(batch)  # (B, C): column j holds the state before completion token j
    last = torch.tensor([len(c) - 1 for c in completions], device=values.device)  # the EOS column
    return values.gather(1, last[:, None]).squeeze(1)


class RewardModel:
    """A trained reward model ready to score text: ``score(prompts, completions) -> list[float]``.

    ``prompts`` are raw task prompts, rendered with the template the model was trained with; ``completions`` are
    responses as the rewards see them (the template's prefill included or not, as in training data).
    """

    def __init__(self, value_model: ValueModel, tokenizer, template: PromptTemplate, *, batch_size: int = 16):
        self.value_model = value_model.eval()
        self.tokenizer = tokenizer
        self.template = template
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.value_model.parameters()).device

    @torch.no_grad()
    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions; they must pair up")
        texts = [split_response(self.template, p, c) for p, c in zip(prompts, completions)]
        encoded = encode_texts(self.tokenizer, [p for p, _ in texts], [c for _, c in texts])
        scores = []
        for start in range(0, len(encoded), self.batch_size):
            part = encoded[start:start + self.batch_size]
            scores += sequence_scores(self.value_model, [p for p, _ in part], [c for _, c in part],
                                      self.tokenizer.pad_token_id, self.device).tolist()
        return scores


def save_reward_model(value_model: ValueModel, tokenizer, template_cfg: TemplateConfig, path: str | Path, *,
                      extra: dict | None = None, write_state: Callable[[Path], None] | None = None) -> Path:
    """Write a reward-model folder atomically (``write_state`` adds training state inside the same rename)."""
    with atomic_dir(path) as tmp:
        value_model.save(tmp)
        tokenizer.save_pretrained(tmp)
        if getattr(tokenizer, "_r1lab_tiny", False):
            (tmp / "r1lab_tiny.json").write_text("{}")
        (tmp / INFO_FILE).write_text(json.dumps({"template": to_dict(template_cfg), **(extra or {})}, indent=2))
        if write_state is not None:
            write_state(tmp)
    return Path(path)


def load_reward_model(path: str | Path, *, dtype: str = "float32", device: str | torch.device = "cpu",
                      batch_size: int = 16) -> RewardModel:
    """A reward model written by a ``reward_model`` stage (its ``final`` folder)."""
    path = Path(path)
    if not (path / INFO_FILE).is_file():
        raise FileNotFoundError(f"no reward model at {path} (missing {INFO_FILE}; a reward_model stage writes it to "
                                f"runs/<run>/<stage>/final)")
    info = json.loads((path / INFO_FILE).read_text())
    tokenizer = load_tokenizer(str(path))
    template_cfg = from_dict(TemplateConfig, info["template"], where="template", source=str(path / INFO_FILE))
    template = PromptTemplate(template_cfg, tokenizer)
    return RewardModel(load_value_model(path, dtype=dtype, device=device), tokenizer, template, batch_size=batch_size)


def make_reward_model_reward(path: str | Path, *, device: str = "auto") -> Callable[[str, dict], float]:
    """A reward function ``(completion, example) -> float``: the reward model at ``path`` scores
    ``example["prompt"]`` and the completion. The model is loaded on the first call and kept; a folder without a
    reward model is an error now, not a reward that fails on every completion."""
    if not (Path(path) / INFO_FILE).is_file():
        raise FileNotFoundError(f"no reward model at {path} (missing {INFO_FILE}; a reward_model stage writes it to "
                                f"runs/<run>/<stage>/final; in a recipe, 'reward_model:<stage name>' names it)")
    loaded: list[RewardModel] = []

    def reward_model_reward(completion: str, example: dict) -> float:
        if not loaded:
            loaded.append(load_reward_model(path, device=resolve_device(device)))
        return loaded[0].score([example["prompt"]], [completion])[0]

    reward_model_reward.__name__ = f"reward_model:{path}"
    return reward_model_reward


