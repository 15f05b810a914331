"""The ``r1lab`` command: run a recipe, evaluate a checkpoint, render a run's report."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from r1lab.checkpoint import DiskFullError
from r1lab.config import ConfigError, describe_fields, render_fields, to_dict
from r1lab.evaluate import evaluate_model
from r1lab.generation import Generator
from r1lab.models import load_model, resolve_device
from r1lab.pipeline import STAGE_KINDS, load_recipe, run_recipe
from r1lab.recipe import RunConfig
from r1lab.report import check_run_folder, summary_problem, write_combined_report, write_report
from r1lab.side_by_side import overrides_for, run_side_by_side
from r1lab.stage import read_done
from r1lab.tasks import TASKS, get_task
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


def resolved_recipe(path: str, overrides: list[str]) -> str:
    """``r1lab run RECIPE --dry-run``: the recipe as it would run, every field of the run and of each stage with its
    value (defaults filled in, overrides applied), after every check; as YAML that ``r1lab run`` reads back."""
    run, stages = load_recipe(path, overrides)
    resolved = {**to_dict(run), "stages": {name: to_dict(cfg) for name, cfg in stages.items()}}
    return f"# {path}, resolved ({' '.join(overrides) or 'no overrides'}); nothing was run\n" + yaml.safe_dump(
        resolved, sort_keys=False, allow_unicode=True)


def cmd_run(args) -> int:
    if args.help_config is not None:
        print(help_config(args.help_config))
        return 0
    recipes, overrides = split_run_arguments(args.items)
    if not recipes:
        raise ConfigError("r1lab run needs a recipe (a YAML file), e.g. r1lab run recipes/tiny/r1_zero.yaml")
    if args.dry_run:
        print("\n".join(resolved_recipe(recipe, overrides_for(recipe, overrides, recipes)) for recipe in recipes))
        return 0
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
                 "template": "template.kind", "prefill_think": "template.prefill_think", "dtype": "dtype"}
EVAL_DEFAULTS = {"task": "arithmetic", "k": 4, "num_problems": 200, "temperature": 0.6, "top_p": 0.95,
                 "max_new_tokens": 64, "seed": 1234, "template": "r1_zero", "prefill_think": False,
                 "dtype": "float32"}


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
    model, tokenizer = load_model(s["model"], dtype=s["dtype"], device=resolve_device(args.device))
    template = PromptTemplate(TemplateConfig(kind=s["template"], prefill_think=s["prefill_think"]), tokenizer)
    print(f"r1lab eval: {s['model']} on {s['num_problems']} held-out {s['task']} problems, k={s['k']}, "
          f"T={s['temperature']}, top-p={s['top_p']}, max_new_tokens={s['max_new_tokens']}", file=sys.stderr)
    result = evaluate_model(Generator("transformers", model, tokenizer), task, template,
                            num_problems=s["num_problems"], k=s["k"], temperature=s["temperature"],
                            top_p=s["top_p"], max_new_tokens=s["max_new_tokens"], seed=s["seed"],
                            samples_path=Path(args.samples) if args.samples else None)
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


def _version() -> str:
    try:
        return importlib.metadata.version("r1lab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="DeepSeek-R1 style reasoning RL: recipes, "
                                     "evaluation and reports.")
    parser.add_argument("--version", action="version", version=f"r1lab {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run (or resume) a recipe: r1lab run RECIPE.yaml [key=value ...]; several "
                         "recipes run side by side with one report")
    run.add_argument("items", nargs="*", metavar="RECIPE_OR_OVERRIDE",
                     help="recipe files, and dotted overrides applied to each, e.g. stages.grpo.steps=10 name=test")
    run.add_argument("--help-config", nargs="?", const="", default=None, metavar="KIND",
                     help="list every recipe key with its type, default and doc, then exit; with a stage kind "
                          "(grpo, ppo, sft, ...) only that kind's keys")
    run.add_argument("--dry-run", action="store_true",
                     help="check the recipe and print it fully resolved (every field, defaults and overrides "
                          "applied) as YAML, then exit without running anything")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--jobs", type=int, default=0,
                     help="several recipes: how many run at once, the CPU cores split between them (default: all)")
    run.add_argument("--report", default="",
                     help="several recipes: folder of the report over all of them (default: runs/<name>-<name>)")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser("eval", help="R1-protocol evaluation of a checkpoint: pass@1 over k samples, cons@k",
                        description="R1-protocol evaluation (DeepSeek-R1 arXiv 2501.12948 §3): k samples per "
                                    "held-out problem at temperature 0.6 / top-p 0.95; prints pass@1, cons@k, "
                                    "unbiased pass@k, format rate, lengths as JSON.")
    ev.add_argument("target", nargs="?", default=None,
                    help="a run folder (runs/<name>: its last model) or a stage of one (runs/<name>/<stage>): "
                         "evaluated with the run's task, template and evaluation settings unless options say "
                         "otherwise")
    ev.add_argument("--model", default=None,
                    help="checkpoint folder (e.g. runs/<run>/<stage>/final) or hub id; instead of a run")
    ev.add_argument("--task", default=None, help=f"task: {', '.join(TASKS)} (default: the run's, else arithmetic)")
    ev.add_argument("--task-option", action="append", default=[],
                    help="task option key=value (repeatable), e.g. digits=2 or ops=+ (the options a recipe's "
                         "task.options takes; with a run, added to the run's)")
    ev.add_argument("--k", type=int, default=None, help="samples per problem (default: the run's, else 4)")
    ev.add_argument("--num-problems", type=int, default=None, help="held-out problems (default: the run's, else 200)")
    ev.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature, 0: greedy (default: the run's, else 0.6)")
    ev.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: the run's, else 0.95)")
    ev.add_argument("--max-new-tokens", type=int, default=None,
                    help="longest completion (default: the run's, else 64)")
    ev.add_argument("--seed", type=int, default=None,
                    help="seed of the problem draw and the sampler (default: the run's, else 1234)")
    ev.add_argument("--template", default=None, choices=["r1_zero", "chat", "plain"],
                    help="how prompts are shown: r1_zero (base models), chat (instruct models), plain (default: "
                         "the run's, else r1_zero)")
    ev.add_argument("--prefill-think", action="store_true", default=None, help="start the response with <think>")
    ev.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: the run's, else float32)")
    ev.add_argument("--device", default="auto", help="auto (cuda when present; the default), cpu, cuda, cuda:N")
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
