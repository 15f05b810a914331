"""The README's one-row-per-stage table of the R1 pipeline, from a run folder of recipes/tiny/r1.yaml.

    .venv/bin/python bench/r1_table.py runs/tiny_r1

Model stages give the held-out evaluation (pass@1, cons@k, format rate, language consistency and the share of
chains of thought that mix languages, mean completion length); data stages give the size of what they wrote, and each
model row names the data set it was trained on.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

LABELS = {"base": "base (pretrained from scratch)", "r1_zero": "R1-Zero (GRPO from base)",
          "cold_start": "cold-start SFT (of base)", "reasoning_rl": "reasoning RL (+ language reward)",
          "rs_sft": "rejection-sampling SFT (of base)", "all_rl": "all-scenario RL (rules + reward model)",
          "dpo": "DPO baseline (from rs_sft, offline)", "student_base": "student base (smaller, from scratch)",
          "distill": "distilled student (SFT on rs_data)", "student_rl": "RL-only student (GRPO from student base)"}


def data_detail(kind: str, data: dict) -> str:
    """Where the rows came from, in words."""
    if kind == "cold_start":
        parts = []
        if "from_outputs" in data:
            parts.append(f"{data['from_outputs']['kept']} of {data['from_outputs']['sampled']} outputs kept")
        if "few_shot" in data:
            parts.append(f"{data['few_shot']['kept']} of {data['few_shot']['sampled']} few-shot samples")
        parts += [f"{data[key]} written" for key in ("written", "written_data") if key in data]
        return ", ".join(parts)
    if kind == "rejection_sampling":
        return (f"{data['kept']} of {data['sampled']} samples kept ({data['correct']} correct), "
                f"+ {data['domain_examples']} domain rows")
    if kind == "preference_pairs":
        return f"{data.get('sampled_pairs', 0)} sampled pairs, {data['domain_pairs']} domain pairs"
    return ""


def rate(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def table(run_dir: Path) -> str:
    summary = json.loads((run_dir / "summary.json").read_text())
    recipe = yaml.safe_load((run_dir / "config.yaml").read_text())
    entries = {e["stage"]: e for e in summary["stages"]}
    k = next(e["eval"]["k"] for e in summary["stages"] if e.get("eval"))
    lines = [f"| stage | pass@1 | cons@{k} | format | language consistency | mixed-language CoT | mean length | "
             f"trained on | seconds |", "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, entry in entries.items():
        config = recipe["stages"].get(name, {})
        if entry.get("data"):
            data = entry["data"]
            detail = data_detail(config.get("kind"), data)
            lines.append(f"| *data: {name}* ({config.get('kind')}) | | | | | | | {data['rows']} rows ({detail}) | "
                         f"{entry['seconds']:.0f} |")
            continue
        result = entry.get("eval")
        if not result:
            continue
        source = config.get("data")
        trained_on = f"{source} ({entries[source]['data']['rows']} rows)" if source in entries else (
            "prompts of the task" if config.get("kind") in ("grpo", "ppo") else "synthetic corpus")
        lines.append(f"| {LABELS.get(name, name)} | {result['pass@1']:.4f} | {result['cons@k']:.4f} | "
                     f"{result['format_rate']:.3f} | {rate(result.get('language_consistency'))} | "
                     f"{rate(result.get('language_mixed_rate'))} | {result['length_mean']:.1f} | {trained_on} | "
                     f"{entry['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/tiny_r1")))
