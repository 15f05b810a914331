"""LoRA and QLoRA policies through peft: train low-rank adapters, keep the base frozen.

With LoRA the reference policy of the KL penalty needs no second copy of the model: it is the same model with its
adapters switched off (``with model.disable_adapter():``), which is exactly the starting model. QLoRA (Dettmers et
al., arXiv 2305.14314) also stores the frozen base in 4-bit NF4 (bitsandbytes, CUDA only).

Checkpoints stay loadable by plain transformers: ``r1lab.models.save_weights`` of a LoRA policy writes the merged
weights (base + scale · B·A, the base dequantized under QLoRA) with a plain config, and the adapter alone in
``adapter/``. A resumed stage loads the base from its init checkpoint and the adapter from ``checkpoint/adapter``.
The merge lives in ``r1lab.models`` (this module builds on it), so saving any policy is one function there.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch

from r1lab.models import enable_activation_checkpointing, is_lora_model, load_model, load_tokenizer, resolve_dtype
# The merge is in r1lab.models so that save_weights needs no import of this module; still reachable from here.
from r1lab.models import merged_state_dict, save_merged  # noqa: F401
from r1lab.recipe import DEFAULT_TARGETS, LoraConfig  # noqa: F401 (the config is read with the recipe, torch-free)

def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError("lora.enabled needs peft: pip install 'r1lab[hf]'") from error
    return peft


def load_lora_policy(run, init_checkpoint: str, checkpoint_dir: str | Path | None, device: torch.device):
    """The base model from ``init_checkpoint`` with LoRA adapters: fresh ones, or those saved in
    ``checkpoint_dir/adapter`` when the stage resumes (None: always fresh). ``run``: anything with the run's
    ``lora``, ``dtype`` and ``gradient_checkpointing`` settings (``RunConfig``, ``r1lab.policy.ModelSettings``)."""
    cfg: LoraConfig = run.lora
    peft = _peft()
    if cfg.load_in_4bit:
        base, tokenizer = _load_4bit(init_checkpoint, run.dtype, device)
        with _without_transformers_renames():
            base = peft.prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=run.gradient_checkpointing,
                gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base, tokenizer = load_model(init_checkpoint, dtype=run.dtype, device=device)
        if run.gradient_checkpointing:
            enable_activation_checkpointing(base)
    adapter = Path(checkpoint_dir) / "adapter" if checkpoint_dir is not None else None
    with _without_transformers_renames():
        if adapter is not None and (adapter / "adapter_config.json").is_file():
            model = peft.PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
        else:
            targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
            model = peft.get_peft_model(base, peft.LoraConfig(
                r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                task_type="CAUSAL_LM"))
    return model, tokenizer


@contextlib.contextmanager
def _without_transformers_renames():
    """peft still calls transformers' old names for activation checkpointing (``is_gradient_checkpointing``,
    ``gradient_checkpointing_enable``), which warn on every LoRA run with nothing for the user to change: silenced
    here, and only these."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing(_enable)?` is deprecated",
                                category=FutureWarning)
        yield


def _load_4bit(path: str, dtype: str, device: torch.device):
    if device.type != "cuda":
        raise RuntimeError(f"lora.load_in_4bit (QLoRA) needs a CUDA GPU, and the device is {device}; "
                           "set lora.load_in_4bit=false to train LoRA on an unquantized base")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise ImportError("lora.load_in_4bit (QLoRA) needs bitsandbytes: pip install bitsandbytes") from error
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = resolve_dtype(dtype)
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                      bnb_4bit_compute_dtype=compute)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=quantization, dtype=compute,
                                                 device_map={"": device.index or 0})
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
