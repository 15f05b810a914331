"""Each prompt through the decoder once against every row whole, side by side on this machine.

    .venv/bin/python bench/shared_prompts.py --out bench/results/shared_prompts_cpu.json

``r1lab.logprobs`` runs each distinct prompt of a training batch once and lets its rows' completions attend to its
cached keys and values (``shared_prompt_rows``); ``R1LAB_SHARE_PROMPTS=0`` (here: ``share_prompts=False``) runs
every row whole. For the two Qwen2-shaped models of ``bench/engine.py`` (fp32, oneDNN products where r1lab picks
them) and one GRPO batch of its settings (2 prompts × G 8, 32-token completions), at several prompt lengths: the
median forward (policy logprobs with grad) and backward time of each way, the two alternating, and the largest
difference of their logprobs and gradients. Prints one JSON object; --out also writes it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from engine import GROUP, NEW_TOKENS, PROMPTS_PER_STEP, SIZES, build  # noqa: E402
from report_json import emit  # noqa: E402


def one_pass(model, batch, share: bool) -> tuple[float, float, torch.Tensor, list[torch.Tensor]]:
    from r1lab.logprobs import completion_logprobs

    model.zero_grad(set_to_none=True)
    started = time.perf_counter()
    logprobs, _ = completion_logprobs(model, batch, share_prompts=share)
    forward = time.perf_counter() - started
    (logprobs * batch.completion_mask).sum().backward()
    backward = time.perf_counter() - started - forward
    return forward, backward, logprobs.detach(), [p.grad.clone() for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(SIZES), help="comma-separated: " + ", ".join(SIZES))
    parser.add_argument("--prompt-tokens", default="9,64,256", help="comma-separated prompt lengths")
    parser.add_argument("--repeats", type=int, default=8, help="timed passes per way (after one warm-up each)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    from r1lab.cpu_matmul import onednn_pays, route_linear_layers
    from r1lab.cpu_memory import keep_freed_memory
    from r1lab.logprobs import make_batch

    keep_freed_memory()  # as `r1lab run` does
    results = {"torch_threads": torch.get_num_threads(), "r1lab_cpu_matmul": "onednn" if onednn_pays() else "blas",
               "settings": {"dtype": "float32", "group": GROUP, "prompts": PROMPTS_PER_STEP,
                            "completion_tokens": NEW_TOKENS}}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory(prefix="r1lab-shared-") as tmp:
            model, tokenizer, parameters = build(size, Path(tmp) / "model")
        model.train()
        route_linear_layers(model)
        entry = {"parameters": parameters}
        for prompt_tokens in (int(n) for n in args.prompt_tokens.split(",")):
            generator = torch.Generator().manual_seed(prompt_tokens)
            vocabulary = len(tokenizer)
            prompts = [torch.randint(5, vocabulary, (prompt_tokens,), generator=generator).tolist()
                       for _ in range(PROMPTS_PER_STEP)]
            completions = [torch.randint(5, vocabulary, (NEW_TOKENS,), generator=generator).tolist()
                           for _ in range(PROMPTS_PER_STEP * GROUP)]
            batch = make_batch([p for p in prompts for _ in range(GROUP)], completions, tokenizer.pad_token_id)
            times = {False: [], True: []}
            for repeat in range(args.repeats + 1):
                for share in (False, True):
                    forward, backward, logprobs, grads = one_pass(model, batch, share)
                    if repeat:
                        times[share].append((forward, backward))
                    if repeat == args.repeats:  # the last pass of each way: compare what they computed
                        if share:
                            gap_logprobs = (logprobs - whole_logprobs).abs().max().item()
                            gap_grads = max(((g - w).abs().max() / w.abs().max().clamp(min=1e-12)).item()
                                            for g, w in zip(grads, whole_grads))
                        else:
                            whole_logprobs, whole_grads = logprobs, grads

            def median(share: bool, which: int) -> float:
                return round(statistics.median(t[which] for t in times[share]) * 1000, 1)

            row = {way: {"forward_ms": median(share, 0), "backward_ms": median(share, 1)}
                   for way, share in (("whole_rows", False), ("each_prompt_once", True))}
            total = {way: row[way]["forward_ms"] + row[way]["backward_ms"] for way in row}
            row["speedup"] = round(total["whole_rows"] / total["each_prompt_once"], 2)
            row["max_logprob_difference"] = gap_logprobs
            row["max_gradient_difference_relative"] = gap_grads
            entry[f"prompt_{prompt_tokens}"] = row
            print(size, prompt_tokens, row, file=sys.stderr)
        results[size] = entry
    emit(results, args.out)


if __name__ == "__main__":
    main()
