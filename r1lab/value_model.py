"""The PPO critic: a causal-LM backbone with a scalar head, V_ψ(s_t) for every completion token (PPO for language
models as in DeepSeekMath, arXiv 2402.03300 §4.1).

The backbone is the base transformer of a causal LM (``AutoModel`` drops the LM head), initialised from the policy
checkpoint, as in most PPO-for-LM setups, or from a reward model when one exists. The head is ``Linear(hidden, 1)``
with small weights, so the critic starts near V = 0 and does not inject noise into the first advantages.

On disk a value model is a folder: the backbone in Hugging Face format (``config.json``, ``model.safetensors``) and
``value_head.safetensors``. PPO writes it as ``value_model/`` inside its checkpoint and final folders.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from r1lab.cpu_matmul import route_linear_layers
from r1lab.dist import world
from r1lab.fsdp import full_state_dict, is_sharded
from r1lab.logprobs import Batch, completion_hidden
from r1lab.models import resolve_dtype

HEAD_FILE = "value_head.safetensors"
HEAD_INIT_STD = 1e-3  # small: initial values ≈ 0, whatever the backbone's hidden states look like


class ValueModel(nn.Module):
    """``backbone`` (a base transformer returning ``last_hidden_state``) + ``head`` Linear(hidden, 1) in fp32."""

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=HEAD_INIT_STD)
            nn.init.zeros_(head.bias)
        if tuple(head.weight.shape) != (1, hidden):
            raise ValueError(f"value head must be Linear({hidden}, 1), got weight {tuple(head.weight.shape)}")
        # the head stays fp32 when the backbone is bf16: one output per token, and returns need the precision
        self.head = head.float().to(next(backbone.parameters()).device)
        route_linear_layers(self)  # fp32 on a CPU: oneDNN products where they beat MKL (r1lab.cpu_matmul)

    def values(self, batch: Batch) -> torch.Tensor:
        """V(s) for the state that predicts each completion token, (B, C), fp32.

        Same alignment as ``completion_logprobs``: completion token j is predicted at position P + j − 1, so
        values[:, j] is the value of the prefix that ends just before token j. Padding columns hold garbage; mask them.
        """
        hidden = completion_hidden(self.backbone, batch)  # (B, C, H), after the final norm; each prompt run once
        return self.head(hidden.float()).squeeze(-1)  # (B, C)

    def save(self, path: str | Path | None) -> Path | None:
        """Write the backbone (HF format) and ``value_head.safetensors`` into ``path`` (made if missing). Sharded
        with FSDP2, every rank must call it (the weights are gathered whole); only rank 0 writes, and a rank with
        nothing to write passes ``path=None``."""
        from safetensors.torch import save_file

        if is_sharded(self):
            state = full_state_dict(self)
            if path is None or not world().is_main:
                return None
            backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
            head = {k.removeprefix("head."): v for k, v in state.items() if k.startswith("head.")}
        else:
            if path is None:
                return None
            backbone, head = None, self.head.state_dict()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(path, safe_serialization=True, state_dict=backbone)
        save_file({k: v.detach().cpu().contiguous() for k, v in head.items()}, str(path / HEAD_FILE))
        return path


def _dtype(name: str | torch.dtype) -> torch.dtype:
    return name if isinstance(name, torch.dtype) else resolve_dtype(name)


def load_value_model(path: str | Path, *, dtype: str | torch.dtype = "float32",
                     device: str | torch.device = "cpu") -> ValueModel:
    """Load a value model written by ``ValueModel.save``."""
    from safetensors.torch import load_file
    from transformers import AutoModel

    path = Path(path)
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"no value model at {path} (missing {HEAD_FILE})")
    backbone = AutoModel.from_pretrained(str(path), dtype=_dtype(dtype)).to(device)
    state = load_file(str(path / HEAD_FILE))
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return ValueModel(backbone, head)


def init_value_model(path: str | Path, *, dtype: str | torch.dtype = "float32",
                     device: str | torch.device = "cpu") -> ValueModel:
    """A value model to start PPO from ``path``, which may be:

    - a value-model folder (``value_head.safetensors`` beside the backbone): loaded as is;
    - a Hugging Face sequence classifier with one label (a reward model): its backbone and its score head;
    - any causal LM checkpoint (usually the policy's): its base transformer and a new small head.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    if (Path(path) / HEAD_FILE).is_file():
        return load_value_model(path, dtype=dtype, device=device)
    config = AutoConfig.from_pretrained(str(path))
    if any(a.endswith("ForSequenceClassification") for a in config.architectures or []) and config.num_labels == 1:
        scorer = AutoModelForSequenceClassification.from_pretrained(str(path), dtype=_dtype(dtype))
        head = nn.Linear(config.hidden_size, 1)
        with torch.no_grad():  # HF reward models score with a bias-free Linear(hidden, 1) named `score`
            head.weight.copy_(scorer.score.weight.float())
            head.bias.copy_(scorer.score.bias.float() if scorer.score.bias is not None else torch.zeros(1))
        return ValueModel(scorer.base_model.to(device), head)
    backbone = AutoModel.from_pretrained(str(path), dtype=_dtype(dtype)).to(device)
    return ValueModel(backbone)
