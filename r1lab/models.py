"""Models and tokenizers: any Hugging Face causal LM by path or hub id, and the embedded tiny model.

The tiny model is a small Qwen2-shaped transformer (a real ``transformers`` architecture, so the tiny path and the
real-model path are the same code) with a character tokenizer built with the ``tokenizers`` library. The R1 tags and
the fixed parts of the R1-Zero template are single tokens, so the template costs two tokens instead of ~400 characters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

log = logging.getLogger("r1lab")

THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "<think>", "</think>", "<answer>", "</answer>"
TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"

# The R1-Zero template (DeepSeek-R1 paper, table 1), split around the user prompt.
R1_ZERO_PREFIX = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. User: "
)
R1_ZERO_SUFFIX = ". Assistant:"

# Characters the tiny tokenizer knows: printable ASCII and newline (the synthetic tasks need no more).
TINY_ALPHABET = [chr(c) for c in range(32, 127)] + ["\n"]


def build_tiny_tokenizer(extra_words: list[str] | None = None):
    """A character-level ``PreTrainedTokenizerFast`` with the tags and template pieces as whole tokens.

    ``extra_words`` become single tokens too (used by tasks whose corpus has a small fixed vocabulary of words).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS]
    vocab = {token: i for i, token in enumerate(specials + TINY_ALPHABET)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    # Every character is its own pre-token; added tokens (tags, template) are matched before this split.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()  # join characters back without inserting spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token=PAD, bos_token=BOS, eos_token=EOS, padding_side="left"
    )
    # Non-special added tokens: they survive decode(skip_special_tokens=True), as the rewards must see them.
    fast.add_tokens(list(TAGS) + [R1_ZERO_PREFIX, R1_ZERO_SUFFIX] + list(extra_words or []))
    fast._r1lab_tiny = True  # saved as a marker file so that loading forces this tokenizer class
    return fast


def build_tiny_model(tokenizer, *, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                     intermediate_size: int = 512, max_positions: int = 512, seed: int = 0):
    """A freshly initialised Qwen2-shaped causal LM sized for a CPU."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        rope_theta=10000.0,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


def resolve_dtype(name: str) -> torch.dtype:
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if name not in table:
        raise ValueError(f"unknown dtype '{name}'; choose one of {sorted(table)}")
    return table[name]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_tokenizer(name_or_path: str):
    """Load a tokenizer; the tiny tokenizer is forced to ``PreTrainedTokenizerFast`` (AutoTokenizer can pick a class
    that drops spaces for a character vocabulary, REFERENCE.md §5)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    marker = Path(name_or_path) / "r1lab_tiny.json"
    if marker.is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name_or_path)
        tokenizer._r1lab_tiny = True
    else:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(name_or_path: str, *, dtype: str = "float32", device: str | torch.device = "cpu"):
    """Load any Hugging Face causal LM (local path or hub id) and its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = Path(name_or_path)
    if not path.exists() and (name_or_path.startswith((".", "/")) or name_or_path.count("/") > 1):
        raise FileNotFoundError(f"model path not found: {name_or_path}")
    tokenizer = load_tokenizer(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=resolve_dtype(dtype))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def save_model(model, tokenizer, path: str | Path, *, extra: dict | None = None) -> Path:
    """Save in Hugging Face format, atomically: write to a temporary sibling folder, then rename."""
    from r1lab.checkpoint import atomic_dir

    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if getattr(tokenizer, "_r1lab_tiny", False):
            (Path(tmp) / "r1lab_tiny.json").write_text(json.dumps({"tokenizer": "char"}))
        if extra:
            (Path(tmp) / "r1lab.json").write_text(json.dumps(extra, indent=2))
    return Path(path)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: GPU memory allocated by torch on CUDA, the process's peak resident size on CPU."""
    if device.type == "cuda":
        return {"gpu/peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"cpu/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
