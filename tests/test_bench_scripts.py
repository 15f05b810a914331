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


def test_every_gpu_shell_script_parses():
    for script in sorted((ROOT / "bench").glob("*.sh")):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"{script.name}: {done.stderr}"


def _fake_wheel(folder: Path, name: str) -> None:
    """A pure-Python wheel of one empty module ``name``, version 1.0 (what pip needs to install it offline)."""
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "", f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(folder / f"{name}-1.0-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_gpu_env_installs_the_carried_wheels_of_missing_modules_only(tmp_path):
    """bench/gpu_env.sh on a Python without math-verify and datasets (a shim hides them): the wheels of .whl/ go
    into R1LAB_GPU_SITE and onto PYTHONPATH, the checkout too; without the wheels it says how to get them."""
    shims = tmp_path / "bin"
    shims.mkdir()
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text("import sys\nsys.modules['math_verify'] = sys.modules['datasets'] = None\n")
    (shims / "python3").write_text(f'#!/bin/sh\nPYTHONPATH="{hide}${{PYTHONPATH:+:$PYTHONPATH}}" '
                                   f'exec {sys.executable} "$@"\n')
    (shims / "python3").chmod(0o755)
    checkout = tmp_path / "checkout"
    (checkout / ".whl").mkdir(parents=True)
    names = ["math_verify", "latex2sympy2_extended", "antlr4_python3_runtime", "datasets", "dill", "multiprocess"]
    for name in names:
        _fake_wheel(checkout / ".whl", name)
    site = tmp_path / "site"
    env = {"PATH": f"{shims}:/usr/bin:/bin", "R1LAB_GPU_SITE": str(site), "HOME": str(tmp_path)}
    show = f'source {ROOT / "bench" / "gpu_env.sh"}; echo "PYTHONPATH=$PYTHONPATH"'
    # ~2 s on an idle machine (two pip installs from local files)
    done = subprocess.run(["bash", "-c", show], cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"PYTHONPATH={checkout}:{site}" in done.stdout, done.stdout + done.stderr
    assert sorted(p.name for p in site.iterdir() if not p.name.endswith(".dist-info")) == sorted(names)

    for wheel in (checkout / ".whl").iterdir():
        wheel.unlink()
    done = subprocess.run(["bash", "-c", show], cwd=checkout, env=env, capture_output=True, text=True, timeout=120)
    assert "lacks math-verify or datasets and .whl/ does not hold their wheels" in done.stderr
    assert f"PYTHONPATH={checkout}\n" in done.stdout
