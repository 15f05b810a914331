"""MKL against oneDNN for the fp32 products of this project's CPU runs, side by side on this machine.

    .venv/bin/python bench/cpu_matmul.py --out bench/results/cpu_matmul_cpu.json

``r1lab.cpu_matmul`` routes fp32 linear layers on a CPU through oneDNN where it beats MKL (PyTorch's default). This
measures what that is worth here:

* single products at the shapes of the two Qwen2-shaped models of ``bench/engine.py`` (hidden 512, MLP 1,408): the
  decode step's (16 rows, each library with its weights reordered once) and the training step's forward and the
  two backward products (656 rows = 16 sequences × 41 tokens);
* a training forward and backward of each whole model on one GRPO batch of those settings (16 × 9 prompt + 20–32
  completion tokens), through ``F.linear`` and through the oneDNN route (``route_linear_layers``), with the
  largest difference of their logprobs and gradients;
* ``r1lab.cpu_matmul.onednn_pays()``: the choice r1lab makes on this machine, with its own timings.

Times are the median of several calls after a warm-up, the two libraries alternating. Prints one JSON object;
--out also writes it.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from engine import SIZES, build  # noqa: E402
from report_json import emit  # noqa: E402


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def alternating(candidates: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call of each candidate, calls alternating between them after one warm-up call each."""
    for fn in candidates.values():
        fn()
    seconds = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            started = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def products(repeats: int) -> list[dict]:
    from r1lab.cpu_matmul import pack, packed_linear

    rows = []
    generator = torch.Generator().manual_seed(0)
    for out_features, in_features, what in ((1536, 512, "q,k,v"), (2816, 512, "gate,up"), (512, 1408, "down")):
        weight = torch.randn(out_features, in_features, generator=generator)
        x16 = torch.randn(16, in_features, generator=generator)
        mkl_packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 16)
        onednn_packed = pack(weight, 16)
        decode = alternating({"mkl": lambda: torch.ops.mkl._mkl_linear(x16, mkl_packed, weight, None, 16),
                              "onednn": lambda: packed_linear(x16, onednn_packed, None)}, repeats * 5)
        x = torch.randn(656, in_features, generator=generator)
        grad = torch.randn(656, out_features, generator=generator)
        weight_t = weight.t().contiguous()
        onednn = torch.ops.mkldnn._linear_pointwise
        train = alternating({
            "mkl": lambda: (F.linear(x, weight), grad @ weight, grad.t() @ x),
            "onednn": lambda: (onednn(x, weight, None, "none", [], ""), onednn(grad, weight_t, None, "none", [], ""),
                               onednn(grad.t().contiguous(), x.t().contiguous(), None, "none", [], ""))}, repeats)
        rows.append({"matrix": f"{what} {out_features}x{in_features}",
                     "decode_16_rows_us": {k: round(v * 1e6, 1) for k, v in decode.items()},
                     "decode_speedup": round(decode["mkl"] / decode["onednn"], 2),
                     "train_656_rows_fwd_bwd_ms": {k: round(v * 1e3, 2) for k, v in train.items()},
                     "train_speedup": round(train["mkl"] / train["onednn"], 2)})
    return rows


def training(size: str, repeats: int) -> dict:
    from r1lab.cpu_matmul import route_linear_layers
    from r1lab.logprobs import completion_logprobs, make_batch

    with tempfile.TemporaryDirectory(prefix="r1lab-matmul-") as tmp:
        model, _, parameters = build(size, Path(tmp) / "model")
    model.train()
    routed = copy.deepcopy(model)
    count = route_linear_layers(routed)
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 60, (9,), generator=generator).tolist() for _ in range(16)]
    completions = [torch.randint(5, 60, (int(torch.randint(20, 33, (1,), generator=generator)),),
                                 generator=generator).tolist() for _ in range(16)]
    batch = make_batch(prompts, completions, 0)

    def step(m):
        m.zero_grad(set_to_none=True)
        logprobs, _ = completion_logprobs(m, batch)
        (logprobs * batch.completion_mask).sum().backward()
        return logprobs.detach()

    gap = (step(model) - step(routed)).abs().max().item()
    grad_gap = max((a.grad - b.grad).abs().max().item() for a, b in zip(model.parameters(), routed.parameters()))
    seconds = alternating({"mkl": lambda: step(model), "onednn": lambda: step(routed)}, repeats)
    return {"parameters": parameters, "linear_layers_routed": count,
            "fwd_bwd_seconds": {k: round(v, 4) for k, v in seconds.items()},
            "speedup": round(seconds["mkl"] / seconds["onednn"], 2),
            "max_logprob_difference": gap, "max_gradient_difference": grad_gap}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per library and shape")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    from r1lab.cpu_matmul import measure, onednn_available, onednn_pays

    if not onednn_available():
        sys.exit("this PyTorch has no oneDNN linear operator: nothing to compare")
    results = {"cpu": cpu_name(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "products": products(args.repeats),
               "training_step": {size: training(size, max(5, args.repeats // 4)) for size in SIZES},
               "r1lab_choice": {"onednn": onednn_pays(),
                                "timings_seconds": {k: round(v, 6) for k, v in measure().items()}}}
    emit(results, args.out)


if __name__ == "__main__":
    main()
