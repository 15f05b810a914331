"""The GPU benchmark is run only on a lent GPU, with minutes counted: its smoke mode runs the same script end to end on
the CPU here, so that a change to the engine cannot break it unseen."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_engine_benchmark_runs_end_to_end_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu_engine.json"
    # ~4 s on an idle 2-core machine; the timeout leaves room for a loaded one
    done = subprocess.run([sys.executable, "bench/gpu_engine.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["graphs"] is False
    assert "complete" not in result  # the partial saves along the way are replaced by the whole
    # the static step (what CUDA graphs capture) and the fused attention give the eager step's greedy completions
    for name in ("graph_agreement", "sdpa_agreement"):
        assert result[name]["identical"] == result[name]["of"] > 0
        assert result[name]["max_logprob_gap"] < 1e-4
    for engine in ("fast", "fast_sdpa", "fast_no_graphs", "transformers"):
        for shape in ("64x1024", "256_in_flight"):
            assert result[engine][shape]["tokens_per_second"] > 0
    assert result["fast"]["weight_refresh_ms"] >= 0
    assert all(ratio > 0 for ratio in result["ratios"].values())
