"""Where a decode step of r1lab's engine spends its time on this machine: the step's wall time, the share in the
matrix products, and the rest (the many small operations around them), for the two Qwen2-shaped models of
``bench/engine.py`` at its settings (fp32, 16 sequences, the cache at 50 positions).

    .venv/bin/python bench/decode_profile.py --out bench/results/decode_profile_cpu.json

For each model: milliseconds per decode step (``CompactModel.decode`` alone, no sampling); the same step's weight
products alone (every layer's four matrices and the head, same shapes, timed by themselves); then the steps under
``torch.profiler`` (which adds its own cost to every operation, so its shares lean towards the small operations):
the time in matrix products (MKL's packed products, ``bmm`` for attention) against every other operation, the
number of operations per step and the costliest of the others. It says why the CPU rollout cannot be many times
faster than ``generate`` by removing overhead alone: at 25.4M the products are about half of the step, at 3.3M the
step is mostly small operations whose cost is PyTorch's per-call cost on this CPU. Also the machine's memory read
rate (a sum over 200 MB), for the products' share of it. Prints one JSON object; --out also writes it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import torch  # noqa: E402
from engine import SIZES, build  # noqa: E402
from report_json import emit  # noqa: E402

ROWS, POSITIONS, LENGTH = 16, 50, 80
PRODUCTS = ("mkl::_mkl_linear", "mkldnn::_linear_pointwise", "aten::mm", "aten::bmm", "aten::addmm")


def read_rate() -> float:
    """GB/s for reading 200 MB (a sum), the best of 5."""
    data = torch.randn(50_000_000)
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return round(data.numel() * 4 / best / 1e9, 1)


def profile(size: str, folder: Path) -> dict:
    from torch.profiler import profile as torch_profile

    from r1lab.engine.fast import CompactModel

    model, _, parameters = build(size, folder)
    compact = CompactModel(model)
    compact.pack_for(ROWS)  # as the engine does for a 16-row batch
    shape = (ROWS, compact.num_kv_heads, LENGTH, compact.head_dim)
    keys = [torch.randn(shape) for _ in range(compact.num_layers)]
    values = [torch.randn(shape) for _ in range(compact.num_layers)]
    tokens, positions = torch.randint(5, 90, (ROWS,)), torch.full((ROWS,), POSITIONS - 1)

    def step():
        compact.decode(tokens, positions, keys, values, POSITIONS)

    # the weight products of one step alone (each layer's qkv, o, gate_up, down, then the head), same shapes
    hidden = compact.weights["embed"].shape[1]
    inputs = {m: torch.randn(ROWS, 1, compact.weights[f"0.{m}"].shape[1]) for m in compact._MATRICES}

    def products():
        for i in range(compact.num_layers):
            for m in compact._MATRICES:
                compact._matmul(inputs[m], f"{i}.{m}")
        compact._matmul(torch.randn(ROWS, hidden), "head")

    def ms(fn, steps=200) -> float:
        for _ in range(20):
            fn()
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        return 1000 * (time.perf_counter() - started) / steps

    with torch.inference_mode():
        ms_per_step, products_alone = ms(step), ms(products)
        profiled = 50
        with torch_profile() as prof:
            for _ in range(profiled):
                step()
    # self times of the leaf operations (aten::linear's own time is its mm's, counted once)
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "mkl::", "mkldnn::"))]
    product_us = sum(e.self_cpu_time_total for e in events if e.key in PRODUCTS)
    other = [e for e in events if e.key not in PRODUCTS and e.self_cpu_time_total > 0]
    other_us = sum(e.self_cpu_time_total for e in other)
    operations = sum(e.count for e in events) / profiled
    weight_mb = sum(compact.weights[f"{i}.{m}"].numel() for i in range(compact.num_layers)
                    for m in compact._MATRICES) * 4 / 1e6
    return {"parameters": parameters, "ms_per_step": round(ms_per_step, 3),
            "weight_products_alone_ms": round(products_alone, 3),
            "weight_products_alone_share": round(products_alone / ms_per_step, 3),
            "profiled_ms_per_step": round((product_us + other_us) / 1000 / profiled, 3),
            "products_ms_per_step": round(product_us / 1000 / profiled, 3),
            "other_ms_per_step": round(other_us / 1000 / profiled, 3),
            "products_share": round(product_us / (product_us + other_us), 3),
            "operations_per_step": round(operations), "weight_matrices_mb": round(weight_mb, 1),
            "top_other_us_per_step": {e.key: round(e.self_cpu_time_total / profiled, 1)
                                      for e in sorted(other, key=lambda e: -e.self_cpu_time_total)[:6]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {"torch_threads": torch.get_num_threads(), "read_gb_per_s": read_rate(),
               "settings": {"rows": ROWS, "positions": POSITIONS, "dtype": "float32"}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in SIZES:
            results[size] = profile(size, Path(tmp) / size)
            print(size, results[size], file=sys.stderr, flush=True)
    emit(results, args.out)


if __name__ == "__main__":
    main()
