"""The engines on a GPU: r1lab's own (``fast``) against transformers' ``generate`` on a Qwen2.5-0.5B-shaped random
model in bf16, side by side in one script on one machine. Run by ``bench/gpu_engine.sh``; ``--smoke`` runs the same
code on a small model (CPU or GPU) in seconds, to check the script itself.

Measures (each from the second of two identical calls; the first, which captures the graphs of its shapes, is
reported beside it): decode time per step at 64 sequences × 1,024 new tokens (and peak memory there), tokens/s with 256
sequences in flight (32 prompts × 8), and the weight refresh after an optimizer step, for r1lab's engine with its
decode steps in CUDA graphs (``fast``), the same with its decode attention in one ``scaled_dot_product_attention``
call (``fast_sdpa``), the same engine without graphs (``fast_no_graphs``) and transformers' generate;
and how far the captured steps' greedy completions agree with the uncaptured ones. The GRPO step of the recipe
with each engine is ``bench/gpu_engine.sh``'s second part. Prints one JSON object; --out writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from report_json import emit  # noqa: E402

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, tie_word_embeddings=True,
                  rope_theta=1000000.0, rms_norm_eps=1e-6)
SMOKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=4096, tie_word_embeddings=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def build(shape: dict, device: torch.device, dtype: torch.dtype):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from r1lab.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(**shape, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype)
    with torch.no_grad():  # EOS never sampled: every sequence runs to max_new_tokens, as the protocol wants
        model.lm_head.weight[tokenizer.eos_token_id].zero_()
    return model.eval(), tokenizer


def decode(engine, prompts: list[str], n: int, new_tokens: int, device) -> dict:
    from r1lab.engine import SamplingParams

    params = SamplingParams(temperature=1.0, max_new_tokens=new_tokens, seed=0)
    engine.generate(prompts[:1], 2, SamplingParams(temperature=1.0, max_new_tokens=8, seed=0))  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    calls = []
    for _ in range(2):  # the first call of a shape captures its graphs; the second is the steady state
        sync(device)
        started = time.perf_counter()
        out = engine.generate(prompts, n, params)
        sync(device)
        calls.append(time.perf_counter() - started)
    seconds = calls[1]
    tokens = sum(len(g.completion_ids) for group in out for g in group)
    result = {"seconds": round(seconds, 3), "first_call_seconds": round(calls[0], 3), "tokens": tokens,
              "tokens_per_second": round(tokens / seconds, 1), "ms_per_step": round(1000 * seconds / new_tokens, 3)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def agreement(graphed, eager, prompt: str, scale: int) -> dict:
    """Greedy completions of the captured static step against the eager one: the share that are identical and the
    largest logprob difference over the tokens both sampled at the same place (bf16 kernels of other shapes round
    differently, so a long greedy completion may part ways after a near tie)."""
    from r1lab.engine import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=256 // scale)
    prompts = [prompt.replace("123", str(100 + i)) for i in range(16 // max(1, scale // 4))]
    a = [g for group in graphed.generate(prompts, 1, params) for g in group]
    b = [g for group in eager.generate(prompts, 1, params) for g in group]
    gaps = [abs(x - y) for ga, gb in zip(a, b) for x, y, ta, tb in zip(ga.logprobs, gb.logprobs, ga.completion_ids,
                                                                       gb.completion_ids) if ta == tb]
    return {"identical": sum(ga.completion_ids == gb.completion_ids for ga, gb in zip(a, b)), "of": len(a),
            "max_logprob_gap": round(max(gaps), 5) if gaps else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a small model and short runs (checks the script)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    from r1lab.engine import FastEngine, TransformersEngine

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shape = SMOKE if args.smoke else QWEN25_05B
    scale = 16 if args.smoke else 1  # the smoke run divides sequences and lengths
    model, tokenizer = build(shape, device, dtype)
    prompt = "A conversation between User and Assistant. User: What is 123 + 456? Assistant: <think>"
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "dtype": str(dtype),
               "shape": "smoke" if args.smoke else "Qwen2.5-0.5B"}
    # fast: r1lab's engine as a recipe gets it (on a GPU: static decode steps captured in CUDA graphs);
    # fast_no_graphs: the same engine stepping over the live rows eagerly, to show what the graphs bring
    # fast_sdpa: the graphs with the fused attention kernel instead of two products (which pays here decides the default)
    engines = {"fast": FastEngine(model, tokenizer), "fast_sdpa": FastEngine(model, tokenizer, attention="sdpa"),
               "fast_no_graphs": FastEngine(model, tokenizer, static=False),
               "transformers": TransformersEngine(model, tokenizer)}
    def save_so_far() -> None:  # a run cut off by the device's time limit still leaves what it measured
        if args.out:
            Path(args.out).write_text(json.dumps({**results, "complete": False}, indent=1) + "\n")

    results["graphs"] = engines["fast"].graphs
    results["graph_agreement"] = agreement(engines["fast"], engines["fast_no_graphs"], prompt, scale)
    results["sdpa_agreement"] = agreement(engines["fast_sdpa"], engines["fast"], prompt, scale)
    save_so_far()
    for name, engine in engines.items():
        entry = {"64x1024": decode(engine, [prompt] * (64 // scale), 1, 1024 // scale, device),
                 "256_in_flight": decode(engine, [prompt] * (32 // scale), 8, 256 // scale, device)}
        results[name] = entry
        print(name, entry, file=sys.stderr, flush=True)
        save_so_far()
    # the weight refresh after an optimizer step (the fast engine copies the policy's weights into its buffers)
    engine = engines["fast"]
    times = []
    for _ in range(5):
        engine.sync_weights()
        sync(device)
        started = time.perf_counter()
        engine.compact.refresh()
        sync(device)
        times.append(time.perf_counter() - started)
    results["fast"]["weight_refresh_ms"] = round(1000 * min(times), 2)
    results["ratios"] = {f"transformers_over_{name}_{key}": round(results["transformers"][key]["ms_per_step"]
                                                               / results[name][key]["ms_per_step"], 2)
                         for name in ("fast", "fast_sdpa", "fast_no_graphs") for key in ("64x1024", "256_in_flight")}
    emit(results, args.out)


if __name__ == "__main__":
    main()
