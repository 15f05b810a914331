"""The ``r1lab`` command: run a recipe, evaluate a checkpoint, render a run's report."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from r1lab.checkpoint import DiskFullError
from r1lab.config import ConfigError, describe_fields, render_fields
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.models import load_model, resolve_device
from r1lab.pipeline import STAGE_KINDS, run_recipe
from r1lab.recipe import RunConfig
from r1lab.report import check_run_folder, summary_problem, write_combined_report, write_report
from r1lab.side_by_side import run_side_by_side
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate, TemplateConfig


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing is reported where it is needed
        pass


def split_run_arguments(items: list[str]) -> tuple[list[str], list[str]]:
    """``r1lab run`` arguments: recipes (paths) and key=value overrides, in any order."""
    recipes = [item for item in items if "=" not in item]
    overrides = [item for item in items if "=" in item]
    return recipes, overrides


def help_config(kind: str = "") -> str:
    """``r1lab run --help-config [KIND]``: every recipe key with its type, default and doc; KIND: that stage only."""
    run_config, stage_kinds = RunConfig, STAGE_KINDS
    if kind and kind not in stage_kinds:
        raise ConfigError(f"--help-config: unknown stage kind '{kind}'; known kinds: {', '.join(stage_kinds)}")
    parts = []
    if not kind:
        parts.append("Run-level keys (top level of a recipe; override as key=value, e.g. eval.k=8):\n"
                     + render_fields(describe_fields(run_config)))
    for name in [kind] if kind else stage_kinds:
        parts.append(f"Stage kind '{name}' (keys of a stage with kind: {name}; override as "
                     f"stages.<stage>.<key>=value):\n" + render_fields(describe_fields(stage_kinds[name])))
    return "\n\n".join(parts)


def cmd_run(args) -> int:
    if args.help_config is not None:
        print(help_config(args.help_config))
        return 0
    recipes, overrides = split_run_arguments(args.items)
    if not recipes:
        raise ConfigError("r1lab run needs a recipe (a YAML file), e.g. r1lab run recipes/tiny/r1_zero.yaml")
    if len(recipes) == 1 and (args.report or args.jobs):
        raise ConfigError("--report and --jobs are for several recipes run side by side")
    if len(recipes) > 1:
        return run_side_by_side(recipes, overrides, jobs=args.jobs, report_dir=args.report, quiet=args.quiet)
    run_recipe(recipes[0], overrides, quiet=args.quiet)
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


def cmd_eval(args) -> int:
    if args.samples:  # before the model loads and the evaluation runs, not after
        check_writable_file(Path(args.samples), "--samples")
    options = {}
    for item in args.task_option:
        key, _, value = item.partition("=")
        options[key] = yaml.safe_load(value)
    task = get_task(args.task, **options)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=resolve_device(args.device))
    template = PromptTemplate(TemplateConfig(kind=args.template, prefill_think=args.prefill_think), tokenizer)
    result = evaluate_model(Generator("transformers", model, tokenizer), task, template,
                            num_problems=args.num_problems, k=args.k, temperature=args.temperature,
                            top_p=args.top_p, max_new_tokens=args.max_new_tokens, seed=args.seed,
                            samples_path=Path(args.samples) if args.samples else None)
    print(json.dumps(result, indent=2))
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="DeepSeek-R1 style reasoning RL: recipes, "
                                     "evaluation and reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a recipe: r1lab run RECIPE.yaml [key=value ...]; several "
                         "recipes run side by side with one report")
    run.add_argument("items", nargs="*", metavar="RECIPE_OR_OVERRIDE",
                     help="recipe files, and dotted overrides applied to each, e.g. stages.grpo.steps=10 name=test")
    run.add_argument("--help-config", nargs="?", const="", default=None, metavar="KIND",
                     help="list every recipe key with its type, default and doc, then exit; with a stage kind "
                          "(grpo, ppo, sft, ...) only that kind's keys")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--jobs", type=int, default=0,
                     help="several recipes: how many run at once, the CPU cores split between them (default: all)")
    run.add_argument("--report", default="",
                     help="several recipes: folder of the report over all of them (default: runs/<name>-<name>)")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="R1-protocol evaluation of a checkpoint: pass@1 over k samples, cons@k")
    ev.add_argument("--model", required=True, help="checkpoint folder or hub id")
    ev.add_argument("--task", default="arithmetic")
    ev.add_argument("--task-option", action="append", default=[], help="task option key=value (repeatable)")
    ev.add_argument("--k", type=int, default=4)
    ev.add_argument("--num-problems", type=int, default=200)
    ev.add_argument("--temperature", type=float, default=0.6)
    ev.add_argument("--top-p", type=float, default=0.95)
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--seed", type=int, default=1234)
    ev.add_argument("--template", default="r1_zero", choices=["r1_zero", "chat", "plain"])
    ev.add_argument("--prefill-think", action="store_true")
    ev.add_argument("--dtype", default="float32")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--samples", default="", help="write every sample with its score to this JSONL file")
    ev.set_defaults(func=cmd_eval)

    rep = sub.add_parser("report", help="render a run's plots and HTML report, or one report over several runs")
    rep.add_argument("runs", nargs="+", help="run folder(s), e.g. runs/tiny_r1_zero")
    rep.add_argument("--out", default="",
                     help="folder of a report over several runs (default: beside the first, named <name>-<name>)")
    rep.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"r1lab: error: {err}", file=sys.stderr)
        return 2
    except DiskFullError as err:  # the message says where, how much is free and that the last checkpoint is intact
        print(f"r1lab: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("r1lab: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head and the like, which stopped reading
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 1


if __name__ == "__main__":
    sys.exit(main())
