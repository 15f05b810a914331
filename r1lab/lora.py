"""LoRA and QLoRA policies through peft: train low-rank adapters, keep the base frozen.

With LoRA the reference policy of the KL penalty needs no second copy of the model: it is the same model with its
adapters switched off (``with model.disable_adapter():``), which is exactly the starting model. QLoRA (Dettmers et
al., arXiv 2305.14314) also stores the frozen base in 4-bit NF4 (bitsandbytes, CUDA only).

Checkpoints stay loadable by plain transformers: ``save_pretrained`` of a LoRA policy writes the merged weights
(base + scale · B·A, the base dequantized under QLoRA) with a plain config, and the adapter alone in ``adapter/``.
A resumed stage loads the base from its init checkpoint and the adapter from ``checkpoint/adapter``.
"""

from __future__ import annotations

import copy
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lab.config import doc

DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraConfig:
    enabled: bool = doc(False, "Train LoRA adapters (peft) instead of every weight; reference = adapters off.")
    r: int = doc(16, "Adapter rank.")
    alpha: int = doc(32, "LoRA alpha: the adapter's update is scaled by alpha / r.")
    dropout: float = doc(0.0, "Dropout on the adapter input (0 keeps sampling and training policies identical).")
    target_modules: list[str] = doc(list(DEFAULT_TARGETS),
                                    "Layers that get adapters (Qwen2 / Llama names); ['all-linear']: every linear "
                                    "layer but the LM head.")
    load_in_4bit: bool = doc(False, "QLoRA: hold the frozen base in 4-bit NF4 (needs bitsandbytes and a CUDA GPU).")


def _peft():
    try:
        import peft
    except ImportError as error:
        raise ImportError("lora.enabled needs peft: pip install 'r1lab[hf]'") from error
    return peft


def is_lora_model(model) -> bool:
    """True for a peft model (checked without importing peft)."""
    return type(model).__module__.startswith("peft.")


def load_lora_policy(run, init_checkpoint: str, checkpoint_dir: str | Path, device: torch.device):
    """The base model from ``init_checkpoint`` with LoRA adapters: fresh ones, or those saved in
    ``checkpoint_dir/adapter`` when the stage resumes. ``run`` is the RunConfig (dtype, lora, checkpointing)."""
    from r1lab.models import load_model

    cfg: LoraConfig = run.lora
    peft = _peft()
    if cfg.load_in_4bit:
        base, tokenizer = _load_4bit(init_checkpoint, run.dtype, device)
        base = peft.prepare_model_for_kbit_training(
            base, use_gradient_checkpointing=run.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        base, tokenizer = load_model(init_checkpoint, dtype=run.dtype, device=device)
        if run.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    adapter = Path(checkpoint_dir) / "adapter"
    if (adapter / "adapter_config.json").is_file():
        model = peft.PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    else:
        targets = "all-linear" if cfg.target_modules == ["all-linear"] else list(cfg.target_modules)
        model = peft.get_peft_model(base, peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                                                          target_modules=targets, task_type="CAUSAL_LM"))
    # The pipeline saves every policy with model.save_pretrained(folder): for this one that writes merged weights.
    model.save_pretrained = types.MethodType(save_merged, model)
    return model, tokenizer


def _load_4bit(path: str, dtype: str, device: torch.device):
    from r1lab.models import load_tokenizer, resolve_dtype

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


def save_merged(model, folder, **_ignored) -> None:
    """Write the merged model to ``folder`` (config.json + model.safetensors, loadable by
    ``AutoModelForCausalLM``) and the adapter alone to ``folder/adapter``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    type(model).save_pretrained(model, str(folder / "adapter"))  # peft's own: the adapter only
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
