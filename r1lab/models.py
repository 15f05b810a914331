"""Models and tokenizers: any Hugging Face causal LM by path or hub id, and the embedded tiny model.

The tiny model is a small Qwen2-shaped transformer (a real ``transformers`` architecture, so the tiny path and the
real-model path are the same code) with a character tokenizer built with the ``tokenizers`` library. The R1 tags and
the fixed parts of the R1-Zero template are single tokens, so the template costs two tokens instead of ~400 characters.

Every policy is saved with ``save_weights`` (``save_model`` adds the tokenizer, atomically): plain Hugging Face weights,
merged for a LoRA policy, with its adapter beside them. A full disk while saving is a ``DiskFullError`` naming the
folder and the free space (``r1lab.checkpoint``).

Inputs a user gets wrong are named before a library fails on them (README, "When something goes wrong"): a folder that
holds no model (a run or stage folder, an empty folder) and, for the tiny model, characters outside its alphabet.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch

from r1lab.checkpoint import atomic_dir, disk_full_error, is_disk_full
from r1lab.config import ConfigError
from r1lab.vocabulary import (  # noqa: F401 (also imported from here)
    ANSWER_CLOSE, ANSWER_OPEN, BOS, EOS, PAD, R1_ZERO_PREFIX, R1_ZERO_SUFFIX, TAGS, THINK_CLOSE, THINK_OPEN,
    TINY_ALPHABET, UnknownCharactersError, check_tiny_characters, is_tiny_tokenizer, known_characters)

log = logging.getLogger("r1lab")


class NotAModelError(ConfigError):
    """A folder given as a model holds none (a run or stage folder, an empty folder); the message says which folder
    to give instead."""


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


# Files that make a folder a Hugging Face model (config.json) or at least a tokenizer.
MODEL_FILE = "config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
# Files `r1lab run` writes in a run folder and in a stage folder.
RUN_FILES = ("summary.json", "config.yaml", "metrics.jsonl")
STAGE_FILES = ("done.json", "final", "checkpoint")


def _model_folders_inside(folder: Path) -> list[str]:
    """Model folders a run or stage folder holds: <stage>/final, final, checkpoint (first ones first)."""
    candidates = [folder / "final", folder / "checkpoint", *sorted(folder.glob("*/final")),
                  *sorted(folder.glob("*/checkpoint"))]
    return [str(path) for path in candidates if (path / MODEL_FILE).is_file()]


def not_a_model_message(folder: Path) -> str:
    """Why ``folder`` (which has no config.json) is not a model, and which folder to give instead."""
    inside = _model_folders_inside(folder)
    instead = (f"give one of its models instead: {', '.join(inside[:4])}" if inside
               else "give a model folder instead: <run>/<stage>/final (it holds config.json and the weights)")
    if any((folder / name).exists() for name in RUN_FILES):
        return f"{folder} is a run folder (it has {_first_present(folder, RUN_FILES)}), not a model; {instead}"
    if any((folder / name).exists() for name in STAGE_FILES):
        return f"{folder} is a stage folder (it has {_first_present(folder, STAGE_FILES)}), not a model; {instead}"
    entries = sorted(path.name for path in folder.iterdir())
    if not entries:
        return f"{folder} is an empty folder, not a model; {instead}"
    shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
    return f"{folder} has no {MODEL_FILE}, so it is not a Hugging Face model (it holds: {shown}); {instead}"


def _first_present(folder: Path, names: tuple[str, ...]) -> str:
    return next(name for name in names if (folder / name).exists())


def load_tokenizer(name_or_path: str):
    """Load a tokenizer; the tiny tokenizer is forced to ``PreTrainedTokenizerFast`` (AutoTokenizer can pick a class
    that drops spaces for a character vocabulary; README, "Notes")."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(name_or_path)
    if folder.is_dir() and not any((folder / name).is_file() for name in (MODEL_FILE, *TOKENIZER_FILES)):
        # transformers would guess a slow tokenizer and ask for sentencepiece
        raise NotAModelError(not_a_model_message(folder))
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
    if path.is_dir() and not (path / MODEL_FILE).is_file():
        raise NotAModelError(not_a_model_message(path))
    tokenizer = load_tokenizer(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=resolve_dtype(dtype))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device), tokenizer


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's activations in the backward pass (non-reentrant checkpoints). transformers 5
    named this ``activation_checkpointing_enable`` (the old ``gradient_checkpointing_enable`` warns until v6 removes
    it); older versions have only the old name."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def save_model(model, tokenizer, path: str | Path, *, extra: dict | None = None) -> Path:
    """Save in Hugging Face format, atomically: write to a temporary sibling folder, then rename."""
    with atomic_dir(path) as tmp:
        save_weights(model, tmp)
        write_tokenizer(tokenizer, tmp)
        if extra:
            (Path(tmp) / "r1lab.json").write_text(json.dumps(extra, indent=2))
    return Path(path)


def is_lora_model(model) -> bool:
    """True for a peft (LoRA / QLoRA) model; checked by its class's module, so peft need not be installed."""
    return type(model).__module__.startswith("peft.")


def save_weights(model, folder: str | Path) -> None:
    """Write a policy's weights and config to ``folder`` in plain Hugging Face format (``AutoModelForCausalLM`` loads
    it). A LoRA policy is written merged, with its adapter alone in ``folder/adapter`` to resume from. A full disk is
    a ``DiskFullError`` naming ``folder`` and the free space."""
    try:
        if is_lora_model(model):
            save_merged(model, folder)
        else:
            model.save_pretrained(folder, safe_serialization=True)
    except Exception as error:  # safetensors' and torch's own words for a full disk, or ENOSPC
        if is_disk_full(error):
            raise disk_full_error(folder, error, action="save the weights to") from error
        raise


def write_tokenizer(tokenizer, folder: str | Path) -> None:
    """``tokenizer.save_pretrained(folder)``, plus the marker that makes ``load_tokenizer`` rebuild the tiny one."""
    tokenizer.save_pretrained(folder)
    if getattr(tokenizer, "_r1lab_tiny", False):
        (Path(folder) / "r1lab_tiny.json").write_text(json.dumps({"tokenizer": "char"}))


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """Weights of the base with every active adapter added in (on CPU), named as in the plain model."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model()
    state: dict[str, torch.Tensor] = {}
    layers = {name: module for name, module in base.named_modules() if isinstance(module, LoraLayer)}
    quantized = {name for name, module in base.named_modules()
                 if hasattr(getattr(module, "weight", None), "quant_state")}
    for key, tensor in base.state_dict().items():
        if ".lora_" in key or any(key.startswith(q + ".weight.") for q in quantized):
            continue  # adapter weights, and bitsandbytes' quantization state (absmax, quant_map, ...)
        state[key.replace(".base_layer.", ".")] = tensor.detach().cpu()
    if quantized:
        from peft.utils.integrations import dequantize_module_weight
    for name in quantized:  # QLoRA: the frozen base back in the compute dtype
        module = base.get_submodule(name)
        state[name.replace(".base_layer", "") + ".weight"] = dequantize_module_weight(module).detach().cpu()
    for name, layer in layers.items():
        key = f"{name}.weight"
        weight = state[key]
        if layer.merged:  # the adapter is already inside the base weight
            continue
        merged = weight.float()
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A or adapter in getattr(layer, "lora_embedding_A", {}):
                merged = merged + layer.get_delta_weight(adapter).detach().float().cpu()
        state[key] = merged.to(weight.dtype)
    return state


def save_merged(model, folder: str | Path) -> None:
    """Write a peft model merged to ``folder`` (config.json + model.safetensors, loadable by
    ``AutoModelForCausalLM``) and the adapter alone to ``folder/adapter``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder / "adapter"))  # peft's own: the adapter only
    base = model.get_base_model()
    state = merged_state_dict(model)
    config = copy.deepcopy(base.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    tied = getattr(config, "tie_word_embeddings", False)
    seen, tensors = set(), {}
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue  # transformers ties it to the input embeddings again on load
        pointer = (tensor.data_ptr(), tuple(tensor.shape))
        if pointer in seen:  # safetensors cannot store one tensor twice
            continue
        seen.add(pointer)
        tensors[key] = tensor.contiguous()
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(folder))
    if getattr(base, "generation_config", None) is not None:
        base.generation_config.save_pretrained(str(folder))


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def peak_memory(device: torch.device) -> dict:
    """Peak memory so far: GPU memory allocated by torch on CUDA, the process's peak resident size on CPU."""
    if device.type == "cuda":
        return {"gpu/peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"cpu/peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
