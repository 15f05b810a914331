"""The ``check_gate`` stage (issue 6): before RL, are the model's own self-checks reliable enough to pay?

Self-checking can only raise accuracy when a check's verdict is right: REFERENCE.md §5 measured a base whose "ok"
marks were on real hits 19–28% of the time, and GRPO then learned to stop checking. This stage samples the model
the way RL will (``temperature`` 1.0 by default), reads the checks in its completions (r1lab.tasks.checks) and
reports ok_precision (share of "ok" marks on real hits), no_precision (share of "no" marks on real misses) and
accuracy by the number of checks in a completion. It writes ``<stage>/gate.json`` (also in summary.json) and warns,
or stops the run (``on_fail: stop``), when a precision is below its threshold. The model passes through unchanged:
the next stage starts from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from r1lab.checkpoint import atomic_write_json
from r1lab.config import doc
from r1lab.engine import make_engine
from r1lab.evaluate import check_reliability


class CheckGateFailed(RuntimeError):
    """The model's self-checks are not reliable enough for RL to reward checking (on_fail: stop)."""


@dataclass
class CheckGateConfig:
    kind: str = doc("check_gate", "Stage kind: measure whether the model's self-checks are reliable before RL.")
    init: str = doc("", "The model to measure: an earlier stage's name, a path or hub id (empty: previous model).")
    num_problems: int = doc(200, "Held-out problems sampled.")
    k: int = doc(4, "Completions per problem.")
    temperature: float = doc(1.0, "Sampling temperature (1.0: what GRPO's rollouts see).")
    top_p: float = doc(1.0, "Nucleus sampling.")
    max_new_tokens: int = doc(128, "Longest completion.")
    min_ok_precision: float = doc(0.5, "Fail when fewer of the 'ok' marks than this are on real hits.")
    min_no_precision: float = doc(0.5, "Fail when fewer of the 'no' marks than this are on real misses.")
    on_fail: Literal["warn", "stop"] = doc("warn", "warn: log and go on; stop: end the run with an error.")
    eval: bool = doc(False, "Also run the task evaluation (the model is unchanged; its row is the previous one's).")


def gate_failures(report: dict, cfg: CheckGateConfig) -> list[str]:
    """Why the gate fails (empty when it passes): missing marks count as failing, a model that never checks cannot
    learn that checking pays."""
    reasons = []
    for name, threshold in (("ok_precision", cfg.min_ok_precision), ("no_precision", cfg.min_no_precision)):
        value = report.get(name)
        if value is None:
            reasons.append(f"no '{name.split('_')[0]}' marks in {report['k'] * report['num_problems']} completions")
        elif value < threshold:
            reasons.append(f"{name} {value:.2f} < {threshold}")
    return reasons


def run_stage(cfg: CheckGateConfig, ctx) -> str:
    """Measure, write gate.json, warn or stop; returns the unchanged model."""
    model, tokenizer = ctx.load_policy()
    model.eval()
    report = check_reliability(make_engine(ctx.run.engine, model, tokenizer), ctx.task, ctx.template,
                               num_problems=cfg.num_problems, k=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens, seed=ctx.run.eval.seed)
    failures = gate_failures(report, cfg)
    report.update({"passed": not failures, "failures": failures, "checkpoint": str(ctx.init_checkpoint)})
    atomic_write_json(ctx.stage_dir / "gate.json", report)
    by_checks = ", ".join(f"{n}: {v['pass_rate']:.2f} ({v['count']})" for n, v in report["accuracy_by_checks"].items())
    ctx.log(f"checks per completion {report['checks_per_completion']:.2f}; ok marks on real hits "
            f"{report['ok_precision']}, no marks on real misses {report['no_precision']}; pass@1 {report['pass@1']:.3f}; "
            f"accuracy by number of checks {by_checks}")
    if failures:
        message = "self-checks are not reliable: " + "; ".join(failures)
        if cfg.on_fail == "stop":
            raise CheckGateFailed(f"stage '{ctx.name}': {message} (see {ctx.stage_dir / 'gate.json'})")
        ctx.warn(message + "; RL is unlikely to reward checking")
    return str(ctx.init_checkpoint)
