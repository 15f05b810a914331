"""The ``r1lab`` command line: the parser, and ``main``, which hands each command to ``r1lab.commands``. Only what
``--help``, ``--version`` and the checks of a recipe need is imported at start-up (no torch): they answer in a
fraction of a second."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys

from r1lab.config import ConfigError
from r1lab.recipe_file import (check_recipes, help_config, overrides_for, resolved_recipe,
                               split_run_arguments)
from r1lab.tasks import TASKS


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except Exception:  # transformers missing is reported where it is needed
        pass


def _version() -> str:
    try:
        return importlib.metadata.version("r1lab")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="r1lab", description="DeepSeek-R1 style reasoning RL: recipes, "
                                     "evaluation and reports.")
    parser.add_argument("--version", action="version", version=f"r1lab {_version()}")
    sub = parser.add_subparsers(dest="name", required=True)

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
    run.set_defaults(command="cmd_run")

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
    ev.add_argument("--engine", default=None, choices=["auto", "fast", "transformers"],
                    help="generation engine (default: the run's, so a run's evaluation is reproduced exactly; "
                         "else auto)")
    ev.add_argument("--samples", default="", help="write every sample with its score to this JSONL file")
    ev.set_defaults(command="cmd_eval")

    rep = sub.add_parser("report", help="render a run's plots and HTML report, or one report over several runs")
    rep.add_argument("runs", nargs="+", help="run folder(s), e.g. runs/tiny_r1_zero")
    rep.add_argument("--out", default="",
                     help="folder of a report over several runs (default: beside the first, named <name>-<name>)")
    rep.set_defaults(command="cmd_report")
    return parser


def _answer_from_recipes(args) -> str | None:
    """``r1lab run --help-config`` and ``--dry-run``, which need the recipes alone; for a run, every recipe checked
    (a ``ConfigError`` naming every problem) and None."""
    if args.help_config is not None:
        return help_config(args.help_config)
    check_recipes(args.items)
    if args.dry_run:
        recipes, overrides = split_run_arguments(args.items)
        return "\n".join(resolved_recipe(recipe, overrides_for(recipe, overrides, recipes)) for recipe in recipes)
    return None


def main(argv: list[str] | None = None) -> int:
    existing = list(logging.getLogger().handlers)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in logging.getLogger().handlers:  # the one printing to the terminal: a stage's warning is printed by
        if handler not in existing:  # its console, once (handlers someone else installed keep every record)
            handler.addFilter(lambda record: not getattr(record, "shown_by_console", False))
    args = build_parser().parse_args(argv)  # --help and --version end here, before torch is imported
    if args.command == "cmd_run":
        try:  # a mistake in a recipe is reported before torch is imported (seconds); so are these two answers
            answer = _answer_from_recipes(args)
        except (ConfigError, FileNotFoundError) as err:
            print(f"r1lab: error: {err}", file=sys.stderr)
            return 2
        if answer is not None:
            print(answer)
            return 0
    _quiet_libraries()
    from r1lab import commands

    try:
        return getattr(commands, args.command)(args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"r1lab: error: {err}", file=sys.stderr)
        return 2
    except commands.DiskFullError as err:  # the message says where, how much is free and that the last checkpoint is intact
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
