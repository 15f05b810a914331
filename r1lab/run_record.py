"""The run folder as the record of a run: what each stage ran with, and logs without the lines of a killed attempt.

- ``<stage>/config.yaml`` is written as the stage starts: every field of the stage's typed config, every run-level
  setting and the model it started from. Its sha256 goes into the stage's ``done.json``. It is the truth about the
  stage's results: run again with a changed recipe, a stage already done is kept and the settings that differ are
  named (``record_differences``), and the run's own ``config.yaml`` shows that stage's section as it ran
  (``run_config_text``).
- ``metrics.jsonl`` and ``samples.jsonl`` hold no line twice: before a stage starts again, the lines its killed
  attempt wrote after its last checkpoint are dropped (``drop_log_lines``).

README, "Locks and the run record".
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from r1lab.checkpoint import atomic_write_text
from r1lab.config import show_value, to_dict

STAGE_CONFIG = "config.yaml"
LOG_FILES = ("metrics.jsonl", "samples.jsonl")
# Run-level settings that say where a run is written and on how many cores, not what it computes: a change of them
# is not a change of a stage's settings (the side-by-side runner changes threads as it likes).
NOT_COMPARED = frozenset({"name", "output_dir", "threads", "keep_checkpoints"})
MODEL_CARD = "README.md"


def stage_record(run, name: str, cfg) -> dict:
    """What stage ``name`` runs with: its typed config's every field, and the run-level settings (its stages aside)."""
    return {"stage": name, "settings": to_dict(cfg),
            "run": {key: value for key, value in to_dict(run).items() if key != "stages"}}


def write_stage_record(stage_dir: Path, record: dict, init: str) -> str:
    """``<stage>/config.yaml``: ``record`` and the model the stage starts from; returns the file's sha256."""
    text = (f"# The settings stage '{record['stage']}' ran with, written as it started (its done.json keeps this "
            f"file's sha256).\n" + yaml.safe_dump({**record, "init": init}, sort_keys=False, allow_unicode=True))
    atomic_write_text(Path(stage_dir) / STAGE_CONFIG, text)
    return text_sha256(text)


def read_stage_record(stage_dir: Path) -> tuple[dict | None, str | None]:
    """``(record, sha256 of the file)`` of a stage, ``(None, None)`` when it has none (a stage of an older r1lab)."""
    path = Path(stage_dir) / STAGE_CONFIG
    try:
        text = path.read_text()
        record = yaml.safe_load(text)
    except (OSError, yaml.YAMLError):
        return None, None
    return (record, text_sha256(text)) if isinstance(record, dict) else (None, None)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def record_differences(recorded: dict, current: dict) -> list[str]:
    """The settings that differ between a stage's ``recorded`` settings and the ``current`` recipe's, as lines
    "stages.grpo.lr: 0.0001 (ran with) -> 0.0002 (this recipe)"; run-level keys in NOT_COMPARED are left out."""
    stage = current["stage"]
    before = {**_flatten(recorded.get("settings", {}), f"stages.{stage}."),
              **_flatten(_compared(recorded.get("run", {})), "")}
    after = {**_flatten(current["settings"], f"stages.{stage}."), **_flatten(_compared(current["run"]), "")}
    missing = object()
    lines = []
    for key in list(dict.fromkeys([*before, *after])):
        old, new = before.get(key, missing), after.get(key, missing)
        if old != new:
            old_text = "(not set)" if old is missing else show_value(old)
            new_text = "(not set)" if new is missing else show_value(new)
            lines.append(f"{key}: {old_text} (ran with) -> {new_text} (this recipe)")
    return lines


def _compared(run_settings: dict) -> dict:
    return {key: value for key, value in run_settings.items() if key not in NOT_COMPARED}


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Nested mappings as dotted keys (lists stay values)."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def run_config_text(run, stages: dict[str, Any], done_records: dict[str, dict | None],
                    differing: dict[str, list[str]]) -> str:
    """The run's ``config.yaml``: the latest recipe with every setting spelled out, except that a stage already done
    shows the settings it ran with (``done_records``: its record, None for a stage done before r1lab kept them), and
    a header names the stages done with other settings than this recipe's (``differing``)."""
    data = to_dict(run)
    data["stages"] = {name: (done_records[name]["settings"] if done_records.get(name) else to_dict(cfg))
                      for name, cfg in stages.items()}
    header = ["The latest recipe run in this folder, every setting spelled out. Each stage's own <stage>/config.yaml "
              "holds what it ran with."]
    for name, lines in differing.items():
        header.append(f"Stage '{name}' was done earlier with other settings; its section below is what it ran with "
                      f"(run-level ones in {name}/config.yaml):")
        header += [f"  {line}" for line in lines]
    unknown = [name for name in done_records if done_records[name] is None]
    if unknown:
        header.append(f"Done before r1lab kept stage records, so their settings are not known: {', '.join(unknown)}")
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def drop_log_lines(run_dir: Path, stage: str, after_step: int) -> int:
    """Drop from the run's logs the lines stage ``stage`` wrote at a step after ``after_step`` (the step of the
    checkpoint it resumes from; -1 when it starts afresh), its final evaluation (written again when it ends), and any
    line a kill cut short. Each file is rewritten atomically, and only when a line goes. Returns the lines dropped."""
    dropped = 0
    for name in LOG_FILES:
        path = Path(run_dir) / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not _written_by_lost_attempt(line, stage, after_step)]
        if len(kept) != len(lines):
            dropped += len(lines) - len(kept)
            atomic_write_text(path, "".join(kept))
    return dropped


def _written_by_lost_attempt(line: str, stage: str, after_step: int) -> bool:
    if not line.endswith("\n"):
        return True  # cut short by a kill: the next line appended would be glued to it
    try:
        record = json.loads(line)
    except ValueError:
        return True
    if not isinstance(record, dict) or record.get("stage") != stage:
        return False
    step = record.get("step")
    return not isinstance(step, int) or step > after_step or any(key.startswith("final_eval/") for key in record)


def model_card(*, run: str, stage: str, kind: str, init: str, command: str, settings: dict,
               evaluation: dict | None, data: str | None = None) -> str:
    """A Hugging Face model card (``README.md`` with YAML metadata) for a stage's model folder, so that the folder
    can be shared as it is: what it was trained from and how, on what, and what it scored on held-out problems."""
    base = init if init and not Path(init).is_absolute() and not init.startswith(".") else None
    metadata = {"library_name": "transformers", "tags": ["r1lab", kind, "reasoning"],
                **({"base_model": base} if base else {})}
    lines = ["---", yaml.safe_dump(metadata, sort_keys=False).strip(), "---", "",
             f"# {run} / {stage}", "",
             f"A `{kind}` stage of the r1lab run `{run}` (DeepSeek-R1-style training, arXiv 2501.12948), started from "
             f"`{init}`." + (f" Trained on `{data}`." if data else ""), "",
             "## Held-out evaluation", ""]
    if evaluation:
        lines += [f"R1 protocol: {evaluation.get('num_problems')} held-out problems, k = {evaluation.get('k')} "
                  f"samples each at temperature {evaluation.get('temperature')}, top-p {evaluation.get('top_p')}.",
                  "", "| metric | value |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in evaluation.items()
                  if isinstance(value, (int, float)) and key not in ("k", "num_problems", "temperature", "top_p")]
    else:
        lines.append("Not evaluated (the stage's `eval: false`).")
    lines += ["", "## How it was made", "", "```bash", command, "```", "",
              "The stage's settings (every field; `config.yaml` beside this folder has the run-level ones too):", "",
              "```yaml", yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).strip(), "```", "",
              "## Use", "", "```python", "from transformers import AutoModelForCausalLM",
              'model = AutoModelForCausalLM.from_pretrained("<this folder>")', "```", "",
              "A model built from scratch by r1lab (`model: tiny`) has a character tokenizer: load it with "
              "`transformers.PreTrainedTokenizerFast.from_pretrained` or `r1lab.models.load_model`.", ""]
    return "\n".join(lines)
