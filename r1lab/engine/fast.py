"""r1lab's own rollout engine: a compact forward of the Llama / Qwen / Mistral family, a KV cache in slots refilled
as sequences finish, each prompt prefilled once for its G completions, sampling on the device.

Why: ``transformers``' ``generate`` spends most of a decode step on per-step Python (logits processors, stopping
criteria, a cache that grows by concatenation, a mask rebuilt every step) and prefills the same prompt G times. The
engines RL trainers use instead (vLLM, SGLang; Kwon et al., arXiv 2309.06180 for the paged KV cache behind them) cannot
be installed everywhere. This one is plain PyTorch and reads the Hugging Face model's own weights:

* **Weights**: the engine's own copy, arranged for decoding (q/k/v and gate/up fused, packed for MKL on a CPU, in the compute
  dtype, LoRA adapters merged), refreshed in place before the first sampling after each optimizer step
  (``sync_weights``), so its storage never moves.
* **Slots**: a (slots, kv heads, length, head dim) cache per layer. One call takes all prompts × n; when a sequence
  ends (EOS or ``max_new_tokens``) its slot takes the next queued one, and once the queue is empty the live slots
  are moved to the front so that the batch shrinks with them (a few long completions do not keep the batch busy).
* **Shared prefill**: each prompt runs through the model once; its cache rows are copied into each of its n slots.
* **Static steps and CUDA graphs** (on a GPU): the decode step runs at a few fixed batch sizes and attention spans
  (powers of two), the mask hiding what a slot must not see, in a workspace kept between calls; each (batch, span)
  step is captured once in a CUDA graph and replayed, one launch instead of hundreds of small kernels.
* **Sampling**: temperature, top-k, top-p in transformers' order and with its tie rules, then one uniform number
  per (seed, sequence, token index) drawn by a counter-based hash, so a completion does not depend on which slot it
  ran in or what ran beside it: the same seed gives the same completions with any number of slots. The logprob of
  each sampled token under the distribution it was drawn from is returned with it.

The family is recognised by ``model_type`` (``unsupported_reason`` says why a model is not). Any other causal LM runs
its own Hugging Face forward in the same slots (``HFSlotModel``: the slot tensors are handed to its attention layers
as a transformers ``Cache``, with explicit positions and 4D masks); a model whose layers cannot use that cache, and
a call whose sequences are longer than a sliding window, sample with ``TransformersEngine`` instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import Cache

from r1lab import cpu_matmul
from r1lab.engine.base import Generation, SamplingParams
from r1lab.engine.hf import TransformersEngine
from r1lab.logprobs import cache_keyword, mask_positions

log = logging.getLogger("r1lab")

SUPPORTED_TYPES = ("qwen2", "qwen3", "llama", "mistral")
_LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def _causal_lm(model):
    """The ``...ForCausalLM`` under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model, max_length: int | None = None) -> str | None:
    """Why the compact forward cannot run ``model`` (None: it can). ``max_length``: the longest prompt + completion
    a call will see (a sliding window shorter than that is not implemented)."""
    lm = _causal_lm(model)
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_TYPES:
        return f"architecture {model_type!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the compact forward has SwiGLU only)"
    rope = (getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type in _LENGTH_DEPENDENT_ROPE:
        return f"rope type {rope_type!r} (its frequencies change with the sequence length)"
    if not hasattr(getattr(lm, "model", None), "rotary_emb"):
        return "no rotary embedding module found"
    if any("4bit" in type(p).__name__ or p.dtype == torch.uint8 for p in lm.parameters()):
        return "quantized weights (QLoRA's 4-bit base)"
    window = _sliding_window(config)
    if window is not None and max_length is not None and max_length > window:
        return f"sliding window {window} shorter than the sequences ({max_length} tokens)"
    return None


def _sliding_window(config) -> int | None:
    window = getattr(config, "sliding_window", None)
    if window is None:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and "sliding_attention" not in layer_types:
        return None
    if config.model_type in ("qwen2", "qwen3") and not getattr(config, "use_sliding_window", False):
        return None
    return int(window)


# --- weights -------------------------------------------------------------------------------------------------------

def _linear(module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of a linear layer; a peft LoRA layer gives its merged weight (base + scale · B·A)."""
    base = getattr(module, "base_layer", None)
    if base is None or not hasattr(module, "get_delta_weight"):
        return module.weight.detach(), (module.bias.detach() if module.bias is not None else None)
    weight = base.weight.detach()
    if not getattr(module, "disable_adapters", False) and not getattr(module, "merged", False):
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).detach().to(weight.dtype)
    return weight, (base.bias.detach() if base.bias is not None else None)


def _copy_rope_pairs(out: torch.Tensor, weight: torch.Tensor, heads: int) -> None:
    """Copy the output rows of a q or k projection (or a bias, or a per-head norm weight) into ``out`` reordered so
    that the dims rotated together by transformers' rope (i and i + D/2 of each head) sit side by side: rope becomes
    one complex multiplication. q and k get the same order, so every attention score is unchanged. One strided copy,
    no temporary: new row (h, 2i + b) is old row (h, b·D/2 + i)."""
    head_dim = weight.shape[0] // heads
    rest = weight.shape[1:]
    out.view(heads, head_dim // 2, 2, *rest).copy_(weight.view(heads, 2, head_dim // 2, *rest).transpose(1, 2))


class CompactModel:
    """The decoder of a Llama / Qwen2 / Qwen3 / Mistral model as a few tensor operations over its weights.

    The weights are the engine's own buffers in the compute ``dtype`` (None: the model's): q, k, v fused, gate and
    up fused, q and k rows in rope-pair order; on a CPU with MKL also packed for the decode batch (``pack_for``). ``refresh()`` copies the model's current weights into the
    same storage, so anything holding them (a captured CUDA graph) stays valid.
    """

    ATTENTION = ("matmul", "sdpa")

    def __init__(self, model, dtype: torch.dtype | None = None, attention: str = "matmul"):
        if attention not in self.ATTENTION:
            raise ValueError(f"decode attention {attention!r}: choose one of {', '.join(self.ATTENTION)}")
        self.attention = attention  # the decode step's: two batched products, or one fused kernel
        self.model = model
        lm = _causal_lm(model)
        config = lm.config
        self.config = config
        self.device = next(lm.parameters()).device
        self.dtype = dtype or next(lm.parameters()).dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.eps = config.rms_norm_eps
        self.scaling = self.head_dim ** -0.5
        rotary = lm.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().to(self.device, torch.float32)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.q_width = self.num_heads * self.head_dim
        self.kv_width = self.num_kv_heads * self.head_dim
        self.weights: dict[str, torch.Tensor | None] = {}
        self.layout = 0  # bumped when ``refresh`` has to allocate a buffer anew (a captured graph holds the old one)
        self.packed: dict[str, torch.Tensor] = {}  # matrices packed (oneDNN or MKL) for `packed_rows`-row products
        self.packed_rows: int | None = None
        self.onednn = False  # products through oneDNN (r1lab.cpu_matmul): set by ``pack_for`` on a CPU in fp32
        self.num_layers = len(lm.model.layers)
        self.refresh()

    def _parts(self) -> dict[str, list[tuple[torch.Tensor, int]] | None]:
        """The model's current weights as the compact forward arranges them: per buffer, the tensors stacked along
        its first dimension, each with the number of heads whose rope pairs to reorder (0: as it is); None for a
        bias the model does not have. Views of the model's parameters (a LoRA layer: its merged weight)."""
        lm = _causal_lm(self.model)
        head, head_bias = _linear(lm.get_output_embeddings())
        parts = {"embed": [(lm.get_input_embeddings().weight.detach(), 0)],
                 "final_norm": [(lm.model.norm.weight.detach(), 0)], "head": [(head, 0)],
                 "head_bias": None if head_bias is None else [(head_bias, 0)]}
        for i, block in enumerate(lm.model.layers):
            attention, mlp = block.self_attn, block.mlp
            (q, q_bias), (k, k_bias), (v, v_bias) = (_linear(attention.q_proj), _linear(attention.k_proj),
                                                     _linear(attention.v_proj))
            parts[f"{i}.qkv"] = [(q, self.num_heads), (k, self.num_kv_heads), (v, 0)]
            parts[f"{i}.qkv_bias"] = (None if q_bias is None else
                                      [(q_bias, self.num_heads), (k_bias, self.num_kv_heads), (v_bias, 0)])
            o, o_bias = _linear(attention.o_proj)
            parts[f"{i}.o"], parts[f"{i}.o_bias"] = [(o, 0)], None if o_bias is None else [(o_bias, 0)]
            for name in ("q_norm", "k_norm"):
                norm = getattr(attention, name, None)
                if norm is not None:
                    parts[f"{i}.{name}"] = [(norm.weight.detach(), 1)]
            (gate, gate_bias), (up, up_bias) = _linear(mlp.gate_proj), _linear(mlp.up_proj)
            parts[f"{i}.gate_up"] = [(gate, 0), (up, 0)]
            parts[f"{i}.gate_up_bias"] = None if gate_bias is None else [(gate_bias, 0), (up_bias, 0)]
            down, down_bias = _linear(mlp.down_proj)
            parts[f"{i}.down"], parts[f"{i}.down_bias"] = [(down, 0)], None if down_bias is None else [(down_bias, 0)]
            parts[f"{i}.input_norm"] = [(block.input_layernorm.weight.detach(), 0)]
            parts[f"{i}.post_norm"] = [(block.post_attention_layernorm.weight.detach(), 0)]
        return parts

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the model's current weights (after an optimizer step) into the engine's buffers, in place: each part
        straight into its rows, no temporary (a temporary of the model's size costs more than the copy, in page
        faults on a CPU)."""
        for name, parts in self._parts().items():
            if parts is None:
                self.weights[name] = None
                continue
            shape = (sum(t.shape[0] for t, _ in parts), *parts[0][0].shape[1:])
            buffer = self.weights.get(name)
            if buffer is None or buffer.shape != shape:
                buffer = self.weights[name] = torch.empty(shape, device=self.device, dtype=self.dtype)
                self.layout += 1
            row = 0
            for tensor, heads in parts:
                out = buffer[row:row + tensor.shape[0]]
                if heads:
                    _copy_rope_pairs(out, tensor, heads)
                else:
                    out.copy_(tensor)
                row += tensor.shape[0]
        self.packed, self.packed_rows = {}, None

    _MATRICES = ("qkv", "o", "gate_up", "down")

    @torch.no_grad()
    def pack_for(self, rows: int) -> None:
        """On a CPU in fp32, prepare every matrix for products with ``rows`` rows: reordered once instead of at every
        call, by oneDNN where it is the faster library on this CPU (``r1lab.cpu_matmul``), else by MKL (a decode
        step with 16 rows runs about twice as fast as through ``F.linear`` on an Intel CPU). oneDNN's packed
        matrices serve any number of rows (the prefill, a batch shrunk as sequences end: 18 rows by a 2,816 × 512
        matrix 0.12 ms packed for 16, 0.22 ms plain); MKL's only the number they were packed for, other products
        take the plain weights. Undone by ``refresh``."""
        if rows == self.packed_rows or self.device.type != "cpu" or self.dtype != torch.float32:
            return
        self.onednn = cpu_matmul.onednn_pays()
        if self.onednn:
            reorder = cpu_matmul.pack
        elif torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
            reorder = torch.ops.mkl._mkl_reorder_linear_weight
        else:
            return
        names = [f"{i}.{m}" for i in range(self.num_layers) for m in self._MATRICES] + ["head"]
        self.packed = {name: reorder(self.weights[name], rows) for name in names}
        self.packed_rows = rows

    # -- the forward ------------------------------------------------------------------------------------------------

    def _w(self, layer: int, name: str) -> torch.Tensor | None:
        return self.weights.get(f"{layer}.{name}")

    def _matmul(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """x (..., K) through the linear layer ``name`` (weight (N, K), bias (N,) if any)."""
        weight, bias = self.weights[name], self.weights.get(f"{name}_bias")
        if self.packed and (self.onednn or x.shape[:-1].numel() == self.packed_rows):
            flat = x.reshape(-1, x.shape[-1])
            out = (cpu_matmul.packed_linear(flat, self.packed[name], bias) if self.onednn else
                   torch.ops.mkl._mkl_linear(flat, self.packed[name], weight, bias, self.packed_rows))
            return out.view(*x.shape[:-1], weight.shape[0])
        return cpu_matmul.linear(x, weight, bias) if self.onednn else F.linear(x, weight, bias)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # as transformers' RMSNorm: normalise in fp32, scale in the compute dtype (in fp32 the weight goes inside
        # the one call: the same product, one operation less)
        if x.dtype == torch.float32 and weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), weight, eps=self.eps)
        return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)

    def rope(self, positions: torch.Tensor) -> torch.Tensor:
        """Complex rotations (*positions.shape, 1, head_dim / 2) for integer ``positions``."""
        angles = positions.float()[..., None, None] * self.inv_freq
        return torch.polar(torch.full_like(angles, self.rope_scale), angles)

    def _rotate(self, x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
        pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(pairs * rotation).flatten(-2).to(self.dtype)

    def _attention_inputs(self, i: int, x: torch.Tensor, rotation: torch.Tensor):
        """q (B, T, heads, D), k and v (B, T, kv heads, D) for the residual stream x (B, T, H), rope applied."""
        B, T, _ = x.shape
        qkv = self._matmul(self._norm(x, self._w(i, "input_norm")), f"{i}.qkv")
        q, k, v = qkv.split([self.q_width, self.kv_width, self.kv_width], dim=-1)
        q = q.view(B, T, self.num_heads, self.head_dim)
        k = k.view(B, T, self.num_kv_heads, self.head_dim)
        if self._w(i, "q_norm") is not None:
            q, k = self._norm(q, self._w(i, "q_norm")), self._norm(k, self._w(i, "k_norm"))
        return self._rotate(q, rotation), self._rotate(k, rotation), v.view(B, T, self.num_kv_heads, self.head_dim)

    def _finish_layer(self, i: int, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """attended (B, heads, T, D) -> the residual stream after the attention output and the MLP."""
        B, _, T, _ = attended.shape
        return self._mlp(i, x + self._matmul(attended.transpose(1, 2).reshape(B, T, -1), f"{i}.o"))

    def _mlp(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """The residual stream x (..., H) after layer i's MLP."""
        gate, up = self._matmul(self._norm(x, self._w(i, "post_norm")), f"{i}.gate_up").chunk(2, dim=-1)
        return x + self._matmul(F.silu(gate) * up, f"{i}.down")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """fp32 logits of the positions in ``hidden`` (..., H), the residual stream before the final norm."""
        return self._matmul(self._norm(hidden, self.weights["final_norm"]), "head").float()

    def prefill(self, ids: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Right-padded prompts ids (B, T) -> keys and values per layer (B, kv heads, T, D) and the residual stream
        (B, T, H). Right padding needs no mask: a real position only sees earlier ones."""
        B, T = ids.shape
        rotation = self.rope(torch.arange(T, device=ids.device))
        x = F.embedding(ids, self.weights["embed"])
        keys, values = [], []
        for i in range(self.num_layers):
            q, k, v = self._attention_inputs(i, x, rotation)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
            keys.append(k)
            values.append(v)
            attended = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling,
                                                      enable_gqa=self.num_kv_heads != self.num_heads)
            x = self._finish_layer(i, x, attended)
        return keys, values, x

    def prefill_last(self, prompts: list[list[int]], pad_id: int):
        """Prompts -> keys and values per layer (P, kv heads, T, D) with prompt p in positions [0, len p), and the
        logits (P, V) of the token after each prompt."""
        lengths = [len(ids) for ids in prompts]
        ids = torch.tensor([ids + [pad_id] * (max(lengths) - len(ids)) for ids in prompts], device=self.device)
        keys, values, hidden = self.prefill(ids)
        last = torch.tensor(lengths, device=self.device) - 1
        return keys, values, self.logits(hidden[torch.arange(len(prompts), device=self.device), last])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
               values: list[torch.Tensor], horizon: int) -> torch.Tensor:
        """One token per slot: ``tokens``, ``positions`` (S,) -> logits (S, V). Writes each slot's key and value at
        its position into ``keys[l]``, ``values[l]`` (≥ S slots, kv heads, length, D), then attends over the first
        ``horizon`` positions, masked to those up to each slot's own.

        The same arithmetic as ``prefill`` in as few operations as it takes, since at a few rows a step costs what
        its operations cost to launch: the residual stream stays (S, H), q and k are rotated in one product, the
        heads sharing a kv head are the rows of one batched product (no repeat of the cache for grouped-query
        attention) and the mask is built once per step (against per-layer 4D views: the same bits, 11–13% faster at
        16–64 rows of 0.8M–3.4M models, 6% at 25.8M)."""
        S, D = tokens.shape[0], self.head_dim
        heads, kv_heads = self.num_heads, self.num_kv_heads
        group, length = heads // kv_heads, keys[0].shape[2]
        # row of (slot, kv head, position) in a cache seen as (slots × kv heads × length, D)
        rows = (torch.arange(S * kv_heads, device=tokens.device).view(S, kv_heads) * length
                + positions[:, None]).flatten()
        rotation = self.rope(positions)  # (S, 1, D / 2)
        visible = torch.arange(horizon, device=tokens.device) <= positions[:, None]  # (S, horizon)
        hidden = ~visible[:, None, :]
        qk_width = self.q_width + self.kv_width

        x = F.embedding(tokens, self.weights["embed"])  # (S, H)
        for i, (key_cache, value_cache) in enumerate(zip(keys, values)):
            qkv = self._matmul(self._norm(x, self._w(i, "input_norm")), f"{i}.qkv")
            if self._w(i, "q_norm") is None:  # q and k side by side in qkv: one rotation for both
                qk = self._rotate(qkv[:, :qk_width].view(S, heads + kv_heads, D), rotation)
                q, k = qk[:, :heads], qk[:, heads:]
            else:
                q = self._rotate(self._norm(qkv[:, :self.q_width].view(S, heads, D), self._w(i, "q_norm")), rotation)
                k = self._rotate(self._norm(qkv[:, self.q_width:qk_width].view(S, kv_heads, D),
                                            self._w(i, "k_norm")), rotation)
            key_cache.view(-1, D).index_copy_(0, rows, k.reshape(-1, D))
            value_cache.view(-1, D).index_copy_(0, rows, qkv[:, qk_width:].reshape(-1, D))
            if self.attention == "sdpa":
                attended = F.scaled_dot_product_attention(
                    q.reshape(S, kv_heads, group, D), key_cache[:S, :, :horizon], value_cache[:S, :, :horizon],
                    attn_mask=visible[:, None, None, :], scale=self.scaling)
            else:  # plain products beat a fused kernel on the CPUs measured; on a GPU either may
                cached_keys = key_cache.view(-1, length, D)[:S * kv_heads, :horizon]
                scores = torch.bmm(q.reshape(S * kv_heads, group, D), cached_keys.transpose(1, 2)).float()
                scores = scores.view(S, heads, horizon).mul_(self.scaling).masked_fill_(hidden, float("-inf"))
                weights = scores.softmax(dim=-1).to(self.dtype).view(S * kv_heads, group, horizon)
                attended = torch.bmm(weights, value_cache.view(-1, length, D)[:S * kv_heads, :horizon])
            x = self._mlp(i, x + self._matmul(attended.reshape(S, heads * D), f"{i}.o"))
        return self.logits(x)


# --- any other causal LM: the Hugging Face model itself over the same slots ---------------------------------------

class _SlotCache(Cache):
    """The engine's slot tensors behind transformers' ``Cache`` interface, so that a Hugging Face model's own attention
    layers read and write them. Prefill (``rows`` None): keeps each layer's keys and values as computed. Decode:
    writes the one new key and value of each slot at its row of the flattened cache (``rows``) and returns the first
    ``horizon`` positions of every slot; the 4D mask passed with it hides what a slot must not see."""

    def __init__(self, keys: list, values: list, rows: torch.Tensor | None = None, horizon: int = 0):
        super().__init__(layers=[])
        self.keys, self.values, self.rows, self.horizon = keys, values, rows, horizon

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if self.rows is None:
            self.keys.append(key_states)
            self.values.append(value_states)
            return key_states, value_states
        key_cache, value_cache = self.keys[layer_idx], self.values[layer_idx]
        S, D = key_states.shape[0], key_states.shape[-1]
        key_cache.view(-1, D).index_copy_(0, self.rows, key_states.reshape(-1, D).to(key_cache.dtype))
        value_cache.view(-1, D).index_copy_(0, self.rows, value_states.reshape(-1, D).to(value_cache.dtype))
        return key_cache[:S, :, :self.horizon], value_cache[:S, :, :self.horizon]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max(self.horizon - 1, 0)


class HFSlotModel:
    """The Hugging Face model's own forward with the engine's slot cache (``_SlotCache``) and explicit positions and
    4D masks: the slot refill and shared prefill of ``FastEngine`` for a causal LM the compact forward does not know.
    It samples from the live model (no copy of the weights); ``dtype``: compute under autocast in it (bf16-mixed)."""

    def __init__(self, model, dtype: torch.dtype | None = None):
        self.model = model
        lm = _causal_lm(model)
        config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        self.config = config
        self.device = next(lm.parameters()).device
        self.autocast_dtype = dtype
        self.dtype = dtype or next(lm.parameters()).dtype
        self.num_layers = config.num_hidden_layers
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.packed_rows = None
        self.layout = 0  # the live model's weights: no copy whose storage could move
        self.cache_argument = cache_keyword(lm)

    def refresh(self) -> None:  # the live model: nothing to copy
        pass

    def pack_for(self, rows: int) -> None:
        pass

    def _forward(self, ids, mask, positions, cache):
        precision = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                     else contextlib.nullcontext())
        with precision:
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             logits_to_keep=1, **{self.cache_argument: cache})
        return out.logits[:, -1].float()

    def _additive(self, visible: torch.Tensor) -> torch.Tensor:
        """A boolean mask as the additive float mask every attention implementation accepts."""
        blocked = torch.finfo(self.dtype).min
        return torch.zeros(visible.shape, dtype=self.dtype, device=self.device).masked_fill_(~visible, blocked)

    def prefill_last(self, prompts: list[list[int]], pad_id: int):
        """As ``CompactModel.prefill_last``. The prompts are padded on the left, so that every row's last token is
        the last position (its logits are the only ones computed), then each row is moved to start at 0."""
        lengths = [len(ids) for ids in prompts]
        width = max(lengths)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts], device=self.device)
        real = torch.tensor([[0] * (width - n) + [1] * n for n in lengths], device=self.device).bool()
        positions = mask_positions(real)
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        visible = causal[None, None] & real[:, None, None, :]
        visible |= torch.eye(width, dtype=torch.bool, device=self.device)[None, None]  # pad rows see themselves
        keys, values = [], []
        logits = self._forward(ids, self._additive(visible), positions, _SlotCache(keys, values))
        if len(keys) != self.num_layers or keys[0].shape[1:] != (self.num_kv_heads, width, self.head_dim):
            raise RuntimeError(f"the model's cache layout {tuple(keys[0].shape)} × {len(keys)} layers is not the "
                               f"(batch, kv heads, length, head dim) × {self.num_layers} the slot engine expects")
        aligned_keys, aligned_values = [], []
        for key, value in zip(keys, values):
            aligned_k, aligned_v = torch.zeros_like(key), torch.zeros_like(value)
            for row, n in enumerate(lengths):
                aligned_k[row, :, :n] = key[row, :, width - n:]
                aligned_v[row, :, :n] = value[row, :, width - n:]
            aligned_keys.append(aligned_k)
            aligned_values.append(aligned_v)
        return aligned_keys, aligned_values, logits

    def decode(self, tokens, positions, keys, values, horizon):
        """As ``CompactModel.decode``."""
        S = tokens.shape[0]
        length = keys[0].shape[2]
        heads = torch.arange(self.num_kv_heads, device=tokens.device)
        rows = ((torch.arange(S, device=tokens.device)[:, None] * self.num_kv_heads + heads) * length
                + positions[:, None]).flatten()
        visible = (torch.arange(horizon, device=tokens.device)[None, :] <= positions[:, None])[:, None, None, :]
        return self._forward(tokens[:, None], self._additive(visible), positions[:, None],
                             _SlotCache(keys, values, rows, horizon))


# --- sampling ------------------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (int64 tensors holding values < 2^32; products stay below 2^63)."""
    x = ((x ^ (x >> 16)) * 0x045D9F3B) & _MASK32
    x = ((x ^ (x >> 16)) * 0x045D9F3B) & _MASK32
    return x ^ (x >> 16)


def uniforms(seed: int, sequence: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """One number in [0, 1) per (seed, sequence id, token index), independent of batch, slot and device (N,)."""
    x = _mix32(torch.full_like(sequence, seed & _MASK32) ^ _mix32(sequence & _MASK32))
    x = _mix32(x ^ _mix32((index + 0x9E3779B9) & _MASK32))
    return (x.double() + 0.5).div(2.0 ** 32).float()


def warp(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Logits (N, V) -> the log-distribution tokens are drawn from: temperature, then top-k, then top-p, in
    transformers' order and with its rules (top-k keeps ties with the k-th value; top-p removes the tokens whose
    ascending cumulative probability is ≤ 1 − top_p and always keeps the most likely one)."""
    if params.temperature <= 0:
        return torch.log_softmax(logits, dim=-1)
    scores = logits / params.temperature if params.temperature != 1.0 else logits
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        ascending, order = torch.sort(scores, dim=-1, descending=False)
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= 1 - params.top_p
        remove[..., -1] = False
        scores = scores.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return torch.log_softmax(scores, dim=-1)


def sample_next(logits: torch.Tensor, params: SamplingParams,
                u: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens (N,) and their logprobs (N,) under the warped distribution, from fp32 logits (N, V) and one number in
    [0, 1) per row ``u`` (N,) (``uniforms``; unused when ``params.temperature`` is 0: greedy)."""
    logp = warp(logits, params)
    if params.temperature <= 0:
        tokens = logp.argmax(dim=-1)
    else:  # inverse CDF: the first token whose cumulative probability passes the row's number
        cdf = logp.exp().cumsum(dim=-1)
        tokens = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(1)
        # rounding can put the number at the very top of the cdf: take the likeliest token then, never one cut off
        tokens = torch.where(tokens < cdf.shape[-1], tokens, logp.argmax(dim=-1))
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


# --- the engine ----------------------------------------------------------------------------------------------------

@dataclass
class _Prompts:
    """A chunk of prompts prefilled together: per layer keys/values (P, kv heads, T, D), their next-token logits."""

    first: int  # index of the chunk's first prompt
    lengths: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor  # (P, V)


def static_by_default(device_type: str, compact: bool) -> bool:
    """Whether an engine decodes in static steps (CUDA graphs) unless told: with the compact forward on a GPU,
    unless the environment says ``R1LAB_CUDA_GRAPHS=0`` (to rule the graphs out when looking for a bug)."""
    return device_type == "cuda" and compact and os.environ.get("R1LAB_CUDA_GRAPHS", "1") != "0"


def batch_bucket(live: int, capacity: int) -> int:
    """The batch size a static decode step runs ``live`` sequences at: the next power of two, at most ``capacity``
    (the workspace's slots, itself a bucket: ``batch_bucket(slots, max_slots)``)."""
    if not 1 <= live <= capacity:
        raise ValueError(f"{live} sequences do not fit a workspace of {capacity} slots")
    return min(1 << (live - 1).bit_length(), capacity)


def span_bucket(needed: int, length: int, smallest: int = 64) -> int:
    """The number of cache positions a static decode step attends over when the slots need ``needed``: the next
    power of two (at least ``smallest``), at most the cache ``length``. Attending over the whole length from the
    first step would read up to twice the cache a long generation needs; one graph per span keeps it below that."""
    return min(max(smallest, 1 << (needed - 1).bit_length()), length)


class _Workspace:
    """The tensors one call decodes in: per layer a key and a value cache (slots, kv heads, length, head dim), per
    slot its outputs and state. A static engine keeps it between calls that fit (its storage never moves, so the
    CUDA graphs captured over it stay valid) along with those graphs, one per (batch, span) bucket."""

    def __init__(self, compact, slots: int, length: int, max_new: int, static: bool = False):
        device, shape = compact.device, (slots, compact.num_kv_heads, length, compact.head_dim)
        self.slots, self.length, self.max_new = slots, length, max_new
        self.keys = [torch.zeros(shape, device=device, dtype=compact.dtype) for _ in range(compact.num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=compact.dtype) for _ in range(compact.num_layers)]
        # one column more than a sequence can fill: a finished slot's step writes there (no mask needed)
        self.out_tokens = torch.zeros(slots, max_new + 1, dtype=torch.long, device=device)
        self.out_logprobs = torch.zeros(slots, max_new + 1, dtype=torch.float32, device=device)
        # per slot: the sequence it holds, the last token, its position, tokens generated so far, ended
        self.sequence = torch.zeros(slots, dtype=torch.long, device=device)
        self.last = torch.zeros(slots, dtype=torch.long, device=device)
        self.position = torch.zeros(slots, dtype=torch.long, device=device)
        self.count = torch.zeros(slots, dtype=torch.long, device=device)
        self.done = torch.ones(slots, dtype=torch.bool, device=device)
        # a static engine's fp32 logits: the one buffer every step (and every graph) writes into
        self.logits = (torch.empty(slots, compact.weights["head"].shape[0], device=device) if static else None)
        self.graphs: dict[tuple[int, int], object] = {}  # (batch, span) -> its CUDA graph (None: not capturable)
        self.layout = compact.layout  # the weight storage the graphs were captured over
        self.pool = None  # the graphs' shared memory pool

    def fits(self, slots: int, length: int, max_new: int) -> bool:
        return slots <= self.slots and length <= self.length and max_new <= self.max_new

    def state(self) -> tuple[torch.Tensor, ...]:
        return self.sequence, self.last, self.position, self.count, self.done

    def reset(self) -> None:
        """Ready for the next call, in place. Zeros, not stale values: a masked position still multiplies its value
        by 0, and 0 × NaN left by an earlier call is NaN."""
        for tensor in (*self.keys, *self.values, self.out_tokens, self.out_logprobs, *self.state()):
            tensor.zero_()
        self.done.fill_(True)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))


class FastEngine:
    """Samples prompts × n sequences through ``max_slots`` cache slots, with the compact forward or the model's own.

    ``dtype``: compute dtype (None: the model's; e.g. ``torch.bfloat16`` on a GPU with fp32 master weights).
    ``prefill_batch``: prompts per prefill. ``check_every``: decode steps between the host's looks at which sequences
    ended (1 on a CPU, where the look costs nothing; more on a GPU, where it waits for the device).
    ``static``: decode at fixed batch sizes and attention spans (powers of two, ``batch_bucket`` and ``span_bucket``),
    with the mask hiding what a slot must not see, so that every step of one (batch, span) runs the same kernels on
    the same storage; on a GPU each is captured once in a CUDA graph and replayed (one launch instead of hundreds).
    None: on for the compact forward on a GPU, off otherwise (on a CPU it only adds work: rows and positions that
    are not in use).
    ``attention``: the compact decode step's attention, ``matmul`` (two batched products around a softmax) or
    ``sdpa`` (``scaled_dot_product_attention`` with the slots' mask; ``bench/gpu_engine.py`` times both on a GPU).
    """

    SMALLEST_SPAN = 64  # the shortest attention span a static step is captured for

    name = "fast"

    # a workspace (KV cache) kept between calls takes at most this share of the GPU's memory; a larger one is freed
    # at the end of each call, so that the training step that follows has the memory
    KEEP_WORKSPACE_SHARE = 0.1

    def __init__(self, model, tokenizer, *, max_slots: int = 256, dtype: torch.dtype | None = None,
                 prefill_batch: int = 32, check_every: int | None = None, forward: str = "auto",
                 static: bool | None = None, attention: str = "matmul"):
        self.model = model
        self.tokenizer = tokenizer
        # ``forward``: "compact" (r1lab's, for the families it knows), "hf" (the model's own over the same slots) or
        # "auto" (compact when it can)
        if forward == "auto":
            forward = "compact" if unsupported_reason(model) is None else "hf"
        self.compact = (CompactModel(model, dtype, attention) if forward == "compact"
                        else HFSlotModel(model, dtype))
        self.fallback: TransformersEngine | None = None  # set when the model's own forward cannot drive the slots
        self.dtype = dtype
        self.stale = False
        self.max_slots = max_slots
        self.prefill_batch = prefill_batch
        self.check_every = check_every or (1 if self.compact.device.type == "cpu" else 8)
        is_compact = isinstance(self.compact, CompactModel)
        if static and not is_compact:
            raise ValueError("static decoding needs the compact forward (forward='compact')")
        if attention != "matmul" and not is_compact:
            raise ValueError(f"attention={attention!r} is the compact forward's (forward='compact')")
        self.static = static_by_default(self.compact.device.type, is_compact) if static is None else static
        self.graphs = self.static and self.compact.device.type == "cuda"
        self._kept: _Workspace | None = None  # a static engine's workspace, kept between calls

    def _workspace(self, slots: int, length: int, max_new: int) -> _Workspace:
        """A workspace for ``slots`` sequences of ``length`` positions: a new one of that size, or for a static
        engine the kept one when the call fits it (reset in place), else a new one rounded up to a batch bucket and
        large enough for the kept one's calls too (alternating shapes settle on one workspace), whose graphs are
        captured as the shapes come."""
        if not self.static:
            return _Workspace(self.compact, slots, length, max_new)
        kept = self._kept
        if kept is not None and kept.fits(slots, length, max_new) and kept.layout == self.compact.layout:
            kept.reset()
            return kept
        slots = batch_bucket(slots, self.max_slots)
        if kept is not None:  # large enough for both calls, so that calls of two shapes (rollouts, evaluations)
            slots, length, max_new = max(slots, kept.slots), max(length, kept.length), max(max_new, kept.max_new)
        self._kept = kept = None  # free the old cache and graphs before the new ones are allocated
        return _Workspace(self.compact, slots, length, max_new, static=True)

    def _keep(self, workspace: _Workspace) -> None:
        """After a static call: keep the workspace (and its graphs) for the next call if it is small enough."""
        device = self.compact.device
        limit = (torch.cuda.get_device_properties(device).total_memory * self.KEEP_WORKSPACE_SHARE
                 if device.type == "cuda" else float("inf"))
        self._kept = workspace if workspace.nbytes() <= limit else None

    def _decode(self, ws: _Workspace, live: int, horizon: int, length: int) -> torch.Tensor:
        """Logits (live, V) of one decode step of the first ``live`` slots."""
        compact = self.compact
        if not self.static:  # only the positions in use and only the live rows
            return compact.decode(ws.last[:live], ws.position[:live].clamp(max=length - 1), ws.keys, ws.values,
                                  min(horizon + 1, length))
        # `horizon` is at least every live slot's position: the span covers what any of them sees
        shape = (batch_bucket(live, ws.slots), span_bucket(horizon + 1, ws.length, self.SMALLEST_SPAN))
        if self.graphs and shape not in ws.graphs:
            ws.graphs[shape] = self._capture(ws, *shape)
        captured = ws.graphs.get(shape) if self.graphs else None
        if captured is not None:
            captured.replay()
            return ws.logits[:live]
        return self._static_step(ws, *shape)[:live]

    def _static_step(self, ws: _Workspace, bucket: int, span: int) -> torch.Tensor:
        # rows past `live` belong to free slots: what they write there is never read
        logits = self.compact.decode(ws.last[:bucket], ws.position[:bucket].clamp(max=ws.length - 1), ws.keys,
                                     ws.values, span)
        # into the one shared buffer, so that the graphs do not each keep a (batch, vocabulary) output alive
        return ws.logits[:bucket].copy_(logits)

    def _capture(self, ws: _Workspace, bucket: int, span: int):
        """The decode step at ``bucket`` rows over ``span`` positions captured in a CUDA graph (it writes the logits
        into ``ws.logits``), or None (it then runs uncaptured) if capture fails. Running the step before capturing is
        harmless: a step writes the keys and values it would write anyway, from the same inputs."""
        device = self.compact.device
        try:
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # warm-up on a side stream, as capture wants (cuBLAS workspaces, allocator)
                self._static_step(ws, bucket, span)
            torch.cuda.current_stream(device).wait_stream(side)
            if ws.pool is None:
                ws.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=ws.pool):
                self._static_step(ws, bucket, span)
            return graph
        except Exception as error:  # noqa: BLE001 - any failure to capture: run the same step uncaptured, say why
            log.info(f"engine fast: the decode step could not be captured in a CUDA graph ({type(error).__name__}: "
                     f"{error}); it runs without graphs")
            self.graphs = False
            return None

    def sync_weights(self) -> None:
        """After an optimizer step: the engine's copy is refreshed (in place) before it next samples."""
        self.stale = True

    def _prefill(self, prompt_ids: list[list[int]], first: int) -> _Prompts:
        chunk = prompt_ids[first:first + self.prefill_batch]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        keys, values, logits = self.compact.prefill_last(chunk, pad)
        return _Prompts(first, [len(ids) for ids in chunk], keys, values, logits)

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        if self.fallback is not None:
            return self.fallback.generate(prompts, n, params)
        if not isinstance(self.compact, HFSlotModel) or getattr(self, "_slots_proven", False):
            return self._generate(prompts, n, params)
        try:  # the first call proves that the model's attention layers work with the slot cache
            result = self._generate(prompts, n, params)
        except (RuntimeError, TypeError, ValueError, AttributeError, IndexError) as error:
            log.info(f"engine: the model's own forward cannot drive the slot cache ({type(error).__name__}: "
                     f"{error}); transformers' generate samples instead")
            self.fallback = TransformersEngine(self.model, self.tokenizer, dtype=self.dtype)
            return self.fallback.generate(prompts, n, params)
        self._slots_proven = True
        return result

    @torch.inference_mode()
    def _generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Generation]]:
        if not prompts:
            return []
        if self.stale:
            self.compact.refresh()
            self.stale = False
        compact, tokenizer = self.compact, self.tokenizer
        device = compact.device
        prompt_ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if any(not ids for ids in prompt_ids):
            raise ValueError("the fast engine cannot sample from an empty prompt")
        window = _sliding_window(compact.config)
        if window is not None and max(len(ids) for ids in prompt_ids) + params.max_new_tokens > window:
            log.info(f"engine fast: sequences longer than the sliding window ({window}): this call samples with "
                     f"transformers' generate")
            return TransformersEngine(self.model, tokenizer).generate(prompts, n, params)
        eos_id = tokenizer.eos_token_id
        max_new = params.max_new_tokens
        total = len(prompts) * n
        slots = min(self.max_slots, total)
        length = max(len(ids) for ids in prompt_ids) + max_new
        compact.pack_for(slots)
        # the random number of every (sequence, token index), drawn once
        numbers = uniforms(params.seed, params.first_sequence + torch.arange(total, device=device)[:, None],
                           torch.arange(max_new + 1, device=device)[None, :]) if params.temperature > 0 else None
        ws = self._workspace(slots, length, max_new)
        keys, values, out_tokens, out_logprobs = ws.keys, ws.values, ws.out_tokens, ws.out_logprobs
        sequence, last, position, count, done = ws.state()
        held = [-1] * slots  # host copy of `sequence` (-1: free)
        results: list[Generation | None] = [None] * total
        progress = [0]  # sequences finished so far, reported through params.progress
        chunks: dict[int, _Prompts] = {}
        next_sequence, horizon, live = 0, 0, slots

        def fill(free: list[int]) -> None:
            """Give each free slot the next queued sequence: copy its prompt's cache rows, sample its first token."""
            nonlocal next_sequence, horizon
            taken = []
            while free and next_sequence < total:
                slot, seq = free.pop(0), next_sequence
                next_sequence += 1
                taken.append((slot, seq))
            by_chunk: dict[int, list[tuple[int, int]]] = {}
            for slot, seq in taken:
                prompt = seq // n
                first = prompt - prompt % self.prefill_batch
                if first not in chunks:
                    chunks[first] = self._prefill(prompt_ids, first)
                by_chunk.setdefault(first, []).append((slot, seq))
            for first, pairs in by_chunk.items():
                chunk = chunks[first]
                slot_index = torch.tensor([s for s, _ in pairs], device=device)
                seq_index = torch.tensor([q for _, q in pairs], device=device)
                rows = seq_index // n - first
                width = chunk.keys[0].shape[2]
                for cache, prompt_cache in zip(keys + values, chunk.keys + chunk.values):
                    cache[slot_index, :, :width] = prompt_cache[rows]
                token, logprob = sample_next(chunk.logits[rows], params,
                                             numbers[seq_index, 0] if numbers is not None else None)
                lengths = torch.tensor(chunk.lengths, device=device)[rows]
                sequence[slot_index], last[slot_index], position[slot_index] = seq_index, token, lengths
                count[slot_index] = 1
                out_tokens[slot_index, 0], out_logprobs[slot_index, 0] = token, logprob
                done[slot_index] = (token == eos_id) | (max_new <= 1)
                for slot, seq in pairs:
                    held[slot] = seq
                horizon = max(horizon, max(chunk.lengths[q // n - first] for _, q in pairs))
            for first in [f for f in chunks if f + self.prefill_batch <= next_sequence // n]:
                del chunks[first]  # every sequence of these prompts has a slot: their rows are no longer needed

        def collect() -> list[int]:
            """Record the finished sequences; returns their (now free) slots."""
            flags = done[:live].tolist()  # the one wait for the device per check
            finished = [s for s in range(live) if held[s] >= 0 and flags[s]]
            for slot in finished:
                seq = held[slot]
                made = int(count[slot])
                ids = out_tokens[slot, :made].tolist()
                ended = ids[-1] == eos_id
                text = tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=True)
                results[seq] = Generation(prompt_ids[seq // n], ids, text, not ended,
                                          logprobs=out_logprobs[slot, :made].tolist())
                held[slot] = -1
            if finished:
                progress[0] += len(finished)
                params.report(progress[0], total)
            return finished

        fill(list(range(slots)))
        steps = 0
        while True:
            if steps % self.check_every == 0:
                free = collect()
                if next_sequence < total:
                    fill(free)
                elif all(h < 0 for h in held[:live]):
                    break
                else:
                    live, horizon = self._compact(held, live, keys, values, out_tokens, out_logprobs, ws.state(),
                                                  horizon)
            logits = self._decode(ws, live, horizon, length)
            # a finished or free slot steps too: what it writes lies past its `count` (column max_new at most, read
            # by no one), and its count and position stay
            column = count[:live, None]
            token, logprob = sample_next(logits, params,
                                         numbers[sequence[:live, None], column].squeeze(1) if numbers is not None
                                         else None)
            active = ~done[:live]
            out_tokens[:live].scatter_(1, column, token[:, None])
            out_logprobs[:live].scatter_(1, column, logprob[:, None])
            last[:live] = token
            position[:live] += active
            count[:live] += active
            done[:live] |= (token == eos_id) | (count[:live] >= max_new)
            horizon = min(horizon + 1, length)
            steps += 1
        if self.static:
            self._keep(ws)
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]

    @staticmethod
    def _compact(held: list[int], live: int, keys, values, out_tokens, out_logprobs, state, horizon: int):
        """With no sequence left to queue and at most half of the slots still running: move those to the front so
        the batch shrinks to them. Returns the new (live, horizon)."""
        running = [s for s in range(live) if held[s] >= 0]
        if len(running) > live // 2:  # halve at least: a decode step costs about the same for a few rows less
            return live, horizon
        index = torch.tensor(running, device=out_tokens.device)
        for tensor in (*keys, *values, out_tokens, out_logprobs, *state):
            tensor[:len(running)] = tensor[index]
        for new, old in enumerate(running):
            held[new] = held[old]
        for slot in range(len(running), live):
            held[slot] = -1
        return len(running), horizon
