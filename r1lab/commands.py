"""What the ``r1lab`` commands do (``r1lab.cli`` parses the command line, then calls these): run recipes, evaluate a
checkpoint, render reports. Kept apart from the parser so that ``r1lab --help`` and ``--version`` answer without
importing torch."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import yaml

from r1lab.checkpoint import DiskFullError  # noqa: F401 (r1lab.cli reports it)
from r1lab.config import ConfigError
from r1lab.console import Console
from r1lab.cpu_matmul import route_linear_layers
from r1lab.cpu_memory import keep_freed_memory
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.models import load_model, resolve_device
from r1lab.pipeline import run_recipe
from r1lab.report import check_run_folder, summary_problem, write_combined_report, write_report
from r1lab.recipe_file import overrides_for, split_run_arguments
from r1lab.side_by_side import run_side_by_side
from r1lab.stage import read_done
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate, TemplateConfig


def cmd_run(args) -> int:
    """Runs the recipes (``--help-config`` and ``--dry-run`` are answered by ``r1lab.cli``, without torch)."""
    recipes, overrides = split_run_arguments(args.items)
    if len(recipes) == 1 and (args.report or args.jobs):
        raise ConfigError("--report and --jobs are for several recipes run side by side")
    if len(recipes) > 1:
        return run_side_by_side(recipes, overrides, jobs=args.jobs, report_dir=args.report, quiet=args.quiet)
    run_recipe(recipes[0], overrides_for(recipes[0], overrides, recipes), quiet=args.quiet)
    return 0


def check_writable_file(path: Path, option: str) -> None:
    """A ``ConfigError`` when ``path`` cannot be written (a folder, under a file, no permission), found before
    anything slow runs; creates the missing parent folders, as the writer would."""
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name, e.g. {path / 'samples.jsonl'}")
    blocking = next((parent for parent in path.parents if parent.exists()), None)
    if blocking is not None and not blocking.is_dir():
        raise ConfigError(f"{option} {path}: cannot write there, {blocking} is a file, not a folder")
    probe = path.with_name(f".{path.name}.tmp-{os.getpid()}")  # the temporary file atomic_write_text writes first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot write in {path.parent} ({error.strerror}); choose a writable "
                          f"path") from None


# r1lab eval's options that a run's own settings fill in (option -> the run config's dotted key), and their
# defaults when neither the command line nor a run gives them.
EVAL_FROM_RUN = {"k": "eval.k", "num_problems": "eval.num_problems", "temperature": "eval.temperature",
                 "top_p": "eval.top_p", "max_new_tokens": "eval.max_new_tokens", "seed": "eval.seed",
                 "template": "template.kind", "prefill_think": "template.prefill_think", "dtype": "dtype",
                 "engine": "engine"}
EVAL_DEFAULTS = {"task": "arithmetic", "k": 4, "num_problems": 200, "temperature": 0.6, "top_p": 0.95,
                 "max_new_tokens": 64, "seed": 1234, "template": "r1_zero", "prefill_think": False,
                 "dtype": "float32", "engine": "auto"}


def eval_settings(args) -> dict:
    """What ``r1lab eval`` runs with: each option from the command line, else from the run given as ``target``
    (its config.yaml: task, template, evaluation settings), else its default; and the model to evaluate: ``--model``,
    else the target's model (a run: its last stage that produced one; ``runs/<run>/<stage>``: that stage's)."""
    settings = {key: getattr(args, key) for key in [*EVAL_DEFAULTS, "model"]}
    run_config, model = {}, None
    target = Path(args.target) if args.target else None
    if target is not None:
        # a run folder has summary.json or metrics.jsonl; a stage folder (config.yaml, done.json) lies inside one
        is_run = (target / "summary.json").is_file() or (target / "metrics.jsonl").is_file()
        run_dir = target if is_run else target.parent
        if not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"r1lab eval {target}: not a run folder or a stage of one (a run folder has "
                              f"config.yaml); give a model with --model")
        run_config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        stage_dirs = [target] if run_dir != target else [run_dir / name for name in run_config.get("stages", {})]
        models = [read_done(folder / "done.json").get("model") for folder in stage_dirs
                  if (folder / "done.json").is_file()]
        model = next((m for m in reversed(models) if m), None)
        if model is None and settings["model"] is None:
            raise ConfigError(f"r1lab eval {target}: no finished stage there produced a model yet")
    for option, dotted in EVAL_FROM_RUN.items():
        if settings[option] is None:
            section, _, key = dotted.rpartition(".")
            value = (run_config.get(section) or {}).get(key) if section else run_config.get(key)
            settings[option] = value if value is not None else EVAL_DEFAULTS[option]
    if settings["task"] is None:
        task_config = run_config.get("task") or {}
        settings["task"] = task_config.get("name", EVAL_DEFAULTS["task"])
        settings["task_options"] = {**(task_config.get("options") or {}), **settings.get("task_options", {})}
    settings["model"] = settings["model"] or model
    if not settings["model"]:
        raise ConfigError("r1lab eval needs a model: --model PATH, or a run folder (runs/<name>[/<stage>])")
    return settings


def cmd_eval(args) -> int:
    if args.samples:  # before the model loads and the evaluation runs, not after
        check_writable_file(Path(args.samples), "--samples")
    options = {}
    for item in args.task_option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    task_from_run = args.task is None
    s = eval_settings(args)
    task = get_task(s["task"], **({**s.get("task_options", {}), **options} if task_from_run else options))
    keep_freed_memory()  # r1lab.cpu_memory
    model, tokenizer = load_model(s["model"], dtype=s["dtype"], device=resolve_device(args.device))
    route_linear_layers(model)  # for an engine that runs the model's own forward (r1lab.cpu_matmul)
    template = PromptTemplate(TemplateConfig(kind=s["template"], prefill_think=s["prefill_think"]), tokenizer)
    console = Console()  # progress on stderr; the result alone on stdout
    print(f"r1lab eval: {s['model']} on {s['num_problems']} held-out {s['task']} problems, k={s['k']}, "
          f"T={s['temperature']}, top-p={s['top_p']}, max_new_tokens={s['max_new_tokens']}, engine {s['engine']}",
          file=sys.stderr)
    try:
        result = evaluate_model(Generator(s["engine"], model, tokenizer), task, template,
                                num_problems=s["num_problems"], k=s["k"], temperature=s["temperature"],
                                top_p=s["top_p"], max_new_tokens=s["max_new_tokens"], seed=s["seed"],
                                samples_path=Path(args.samples) if args.samples else None,
                                progress=lambda done, total: console.progress("eval", done, total, "samples",
                                                                              unit="sample"))
    finally:
        console.close()
    print(json.dumps({"model": s["model"], **result}, indent=2))
    return 0


def cmd_report(args) -> int:
    """Render the report; rc 2 for a folder that is no run (nothing written), rc 1 when a run's summary.json is
    corrupted (the report is written without its evaluation table, and the message says how to rewrite it)."""
    run_dirs = [Path(run) for run in args.runs]
    for run_dir in run_dirs:
        check_run_folder(run_dir)
    if len(run_dirs) == 1 and not args.out:
        print(write_report(run_dirs[0]))
    else:
        default_out = run_dirs[0].parent / "-".join(run_dir.name for run_dir in run_dirs)
        print(write_combined_report(run_dirs, args.out or default_out))
    problems = [problem for problem in map(summary_problem, run_dirs) if problem]
    for problem in problems:
        print(f"r1lab report: {problem}", file=sys.stderr)
    return 1 if problems else 0
