"""Tiny random models of the real architectures, built on the spot for tests (no download)."""

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from r1lab.models import build_tiny_model


def small_model(tok, kind: str, **config):
    """A 2-layer random model of ``kind`` (tiny, qwen2, qwen3, llama, mistral) for the embedded tokenizer, its weights
    scaled up so that next-token distributions are peaked and varied; ``config``: more settings of its config."""
    torch.manual_seed(11)
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                  **config)
    if kind == "tiny":
        return build_tiny_model(tok, hidden_size=64, num_layers=2, num_heads=4, intermediate_size=96, seed=5)
    if kind == "qwen2":  # grouped-query attention, qkv bias, tied head
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    elif kind == "qwen3":  # q/k norms, head_dim not hidden/heads, untied head
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=24, tie_word_embeddings=False))
    elif kind == "llama":  # Llama 3.x rope scaling, untied head, biases in attention and MLP
        model = LlamaForCausalLM(LlamaConfig(**common, attention_bias=True, mlp_bias=True, rope_parameters={
            "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}))
    elif kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**{"sliding_window": None, **common}))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # random init has tiny weights; larger ones give peaked, varied next-token distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
            elif "bias" in str(p.shape) or p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()
