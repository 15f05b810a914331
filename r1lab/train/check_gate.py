"""The ``check_gate`` stage: before RL, are the model's own self-checks reliable enough to pay?

Self-checking can only raise accuracy when a check's verdict is right: a base whose "ok" marks were on real
hits 19–28% of the time taught GRPO to stop checking (README, "The aha moment in miniature"). This stage samples
the model the way RL will (``temperature`` 1.0 by default), reads the checks in its completions (r1lab.tasks.checks) and
reports ok_precision (share of "ok" marks on real hits), no_precision (share of "no" marks on real misses) and
accuracy by the number of checks in a completion. It writes ``<stage>/gate.json`` (also in summary.json) and warns,
or stops the run (``on_fail: stop``), when a precision is below its threshold. The model passes through unchanged:
the next stage starts from it.
"""

from __future__ import annotations

from statistics import fmean

from r1lab.checkpoint import atomic_write_json
from r1lab.engine import SamplingParams
from r1lab.generation import Generator, sample_and_score
from r1lab.stage import Stage, StageOutput
from r1lab.tasks.checks import summarize_checks
from r1lab.stage_configs import CheckGateConfig


class CheckGateFailed(RuntimeError):
    """The model's self-checks are not reliable enough for RL to reward checking (on_fail: stop)."""


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


def check_reliability(generator: Generator, task, template, *, num_problems: int, k: int, temperature: float,
                      top_p: float, max_new_tokens: int, seed: int, split: str = "test") -> dict:
    """Samples k completions on ``num_problems`` held-out problems and reads their checks (r1lab.tasks.checks):
    ok_precision (share of "ok" marks on real hits), no_precision (share of "no" marks on real misses), None without
    such marks; accuracy_by_checks {n_checks: {"pass_rate", "count"}}; checks_per_completion, revisions, pass@1."""
    examples = task.examples(split, num_problems, seed=seed)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed)
    samples = sample_and_score(generator, template, examples, k, params, verify_answers=True,
                               split_over_ranks=True)
    summary = summarize_checks(samples.responses, samples.examples, samples.correct)
    summary.update({"pass@1": round(fmean(samples.correct), 4), "num_problems": len(examples), "k": k,
                    "temperature": temperature, "top_p": top_p})
    return summary


def run_stage(cfg: CheckGateConfig, stage: Stage) -> StageOutput:
    """Measure, write gate.json, warn or stop; the model passes through unchanged."""
    policy = stage.load_policy(trainable=False)
    report = check_reliability(stage.generator(policy), stage.task, stage.template, num_problems=cfg.num_problems,
                               k=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_new_tokens=cfg.max_new_tokens, seed=stage.run.eval.seed)
    failures = gate_failures(report, cfg)
    report.update({"passed": not failures, "failures": failures, "checkpoint": str(stage.init)})
    atomic_write_json(stage.folder / "gate.json", report)
    by_checks = ", ".join(f"{n}: {v['pass_rate']:.2f} ({v['count']})" for n, v in report["accuracy_by_checks"].items())
    stage.log(f"checks per completion {report['checks_per_completion']:.2f}; ok marks on real hits "
              f"{report['ok_precision']}, no marks on real misses {report['no_precision']}; pass@1 "
              f"{report['pass@1']:.3f}; accuracy by number of checks {by_checks}")
    if failures:
        message = "self-checks are not reliable: " + "; ".join(failures)
        if cfg.on_fail == "stop":
            raise CheckGateFailed(f"stage '{stage.name}': {message} (see {stage.folder / 'gate.json'})")
        stage.warn(message + "; RL is unlikely to reward checking")
    return StageOutput(model=stage.init)
