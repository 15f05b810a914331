"""The countdown_checks task, check parsing, the reliability gate, the Countdown tasks' metrics (rollout and
evaluation) and the reasoning plot."""

import json
import random

import pytest
import torch

from r1lab.engine import Generation
from r1lab.train.check_gate import check_reliability
from r1lab.report import plot_reasoning_metrics, write_report
from r1lab.rewards import ScoreResult, extract_answer, format_reward
from r1lab.rollout import Rollout, rollout_metrics
from r1lab.tasks import TASKS, get_task, task_metrics, verify
from r1lab.tasks.checks import count_revisions, parse_checks, reasoning_text, summarize_checks

EX = {"prompt": "3 5 7 -> 22", "answer": "3*5+7", "verifier": "countdown", "task": "countdown_checks",
      "numbers": [3, 5, 7], "target": 22}


def _task(**options):
    return get_task("countdown_checks", **options)


# --- the task ---


def test_registered_and_options_checked():
    assert TASKS["countdown_checks"] is type(_task())
    with pytest.raises(ValueError, match="ops"):
        _task(ops="+-*/")
    with pytest.raises(ValueError, match="max_misses"):
        _task(max_misses=-1)
    with pytest.raises(ValueError, match="style"):
        _task().corpus_document(EX, random.Random(0), "plain")


def test_search_traces_parse_every_mark_is_correct_and_the_answer_verifies():
    task = _task()
    rng = random.Random(0)
    lengths = set()
    for example in task.examples("train", 150, seed=1):
        doc = task.corpus_document(example, rng, "search")
        target = example["target"]
        assert reasoning_text(doc).startswith(f"target {target} ")
        checks = parse_checks(doc, example)
        assert checks and all(c.mark_is_correct for c in checks)
        assert [c.mark for c in checks] == ["no"] * (len(checks) - 1) + ["ok"]  # stops at the first "ok"
        assert all(c.value == int(c.claimed) for c in checks)  # values written are true values
        assert len({c.expression for c in checks}) == len(checks)  # no candidate tried twice
        assert count_revisions(doc, example) == len(checks) - 1
        assert verify(extract_answer(doc), example) and format_reward(doc, example) == 1.0
        assert extract_answer(doc) == checks[-1].expression
        for c in checks:  # the written difference is claimed - target
            assert f" {c.claimed}-{target}={int(c.claimed) - target} {c.mark}" in doc
        lengths.add(len(checks))
    assert lengths == {1, 2, 3, 4, 5}  # 0..max_misses misses before the hit


def test_guess_and_wrong_mark_styles():
    task = _task(guess_hit_rate=0.5)
    rng = random.Random(0)
    examples = task.examples("train", 200, seed=2)
    guesses = [(task.corpus_document(ex, rng, "guess"), ex) for ex in examples]
    assert all(parse_checks(doc, ex) == [] and format_reward(doc, ex) == 1.0 for doc, ex in guesses)
    hit_rate = sum(verify(extract_answer(doc), ex) for doc, ex in guesses) / len(guesses)
    assert 0.35 < hit_rate < 0.75
    for ex in examples[:50]:
        doc = task.corpus_document(ex, rng, "search_wrong_mark")
        checks = parse_checks(doc, ex)
        assert checks[-1].mark == "ok" and not checks[-1].mark_is_correct and not verify(extract_answer(doc), ex)
        assert all(c.mark_is_correct for c in checks[:-1])


def test_splits_are_disjoint_and_deterministic():
    task = _task()
    key = lambda ex: (tuple(sorted(ex["numbers"])), ex["target"])
    train = task.examples("train", 400, seed=0)
    test = task.examples("test", 100, seed=0)
    assert not {key(e) for e in train} & {key(e) for e in test}
    assert train == task.examples("train", 400, seed=0)
    assert all(verify(ex["answer"], ex) and ex["task"] == "countdown_checks" for ex in train)
    docs = [task.corpus_document(ex, random.Random(5), "search") for ex in train[:20]]
    assert docs == [task.corpus_document(ex, random.Random(5), "search") for ex in train[:20]]


def test_extra_tokens_make_each_integer_one_token():
    from r1lab.models import build_tiny_tokenizer

    task = _task(max_number=4, max_target=20)
    assert task.extra_tokens[:6] == ["target", "ok", "no", "0", "1", "2"]
    assert task.extra_tokens[-1] == str(4**3 + 20)
    assert _task(int_tokens=False).extra_tokens == ["target", "ok", "no"]
    tokenizer = build_tiny_tokenizer(task.extra_tokens)
    text = "target 22 3*5+7=15+7=22 22-22=0 ok"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces.count("22") == 4 and "target" in pieces and "ok" in pieces and tokenizer.decode(ids) == text


@pytest.mark.parametrize("expression, chain", [
    ("3*5+7", ["3*5+7", "15+7", "22"]),
    ("4*(4+4)", ["4*(4+4)", "4*8", "32"]),
    ("1-5+2", ["1-5+2", "-4+2", "-2"]),  # a negative number on the left needs no parentheses
    ("3-(1-5)", ["3-(1-5)", "3-(-4)", "7"]),  # on the right it does
    ("9-(2+3)", ["9-(2+3)", "9-5", "4"]),
    ("2*3*4", ["2*3*4", "6*4", "24"]),
])
def test_evaluation_chain_one_operation_at_a_time(expression, chain):
    from r1lab.tasks.countdown_checks import evaluation_chain

    assert evaluation_chain(expression) == chain
    assert all(eval(step) == eval(expression) for step in chain)  # each rewrite keeps the value


def test_stepwise_off_writes_the_value_at_once():
    ex = {**EX}
    assert _task().written("3*5+7", 22) == "3*5+7=15+7=22"
    assert _task(stepwise=False).written("3*5+7", 22) == "3*5+7=22"
    doc = _task(stepwise=False).corpus_document(ex, random.Random(0), "guess")
    assert "=" in doc and doc.count("=") == 1


# --- parsing checks ---


@pytest.mark.parametrize("completion, expected, revisions", [
    ("<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>",
     [("3+5+7", "15", 15, "no", True, False), ("3*5+7", "22", 22, "ok", True, True)], 1),
    # evaluated one operation at a time: the first expression is the candidate, the last number its value
    ("<think>target 22 3+5+7=8+7=15 15-22=-7 no 3*5+7=15+7=22 22-22=0 ok</think><answer>3*5+7</answer>",
     [("3+5+7", "15", 15, "no", True, False), ("3*5+7", "22", 22, "ok", True, True)], 1),
    # the old countdown corpus form (no difference)
    ("<think>3*5+7=22 ok</think><answer>3*5+7</answer>", [("3*5+7", "22", 22, "ok", True, True)], 0),
    # a wrong claimed value, marked "ok": the mark is judged by the truth, not by the claim
    ("<think>target 22 3+5+7=22 22-22=0 ok</think><answer>3+5+7</answer>",
     [("3+5+7", "22", 15, "ok", False, False)], 0),
    # a hit marked "no", then a revision that is marked "ok" wrongly
    ("<think>target 22 5*3+7=22 22-22=0 no 7-5-3=-1 -1-22=-23 ok</think>",
     [("5*3+7", "22", 22, "no", False, True), ("7-5-3", "-1", -1, "ok", False, False)], 1),
    # right value but the wrong numbers is not a hit
    ("<think>target 22 3*7+1=22 22-22=0 ok</think>", [("3*7+1", "22", 22, "ok", False, False)], 0),
    # a guess: a candidate with no mark is not a check
    ("<think>target 22 3+5+7=15</think><answer>3+5+7</answer>", [], 0),
    # an unmarked candidate after a "no" is still a revision
    ("<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22</think>", [("3+5+7", "15", 15, "no", True, False)], 1),
    # malformed: marks with no candidate, garbage, an unfinished think, an invalid expression
    ("ok no <think>ok target 22 no", [], 0),
    ("<think>target 22 3++5=8 8-22=-14 no 3*5+7=22 22-22=0 ok, then", [
        ("3++5", "8", None, "no", True, False), ("3*5+7", "22", 22, "ok", True, True)], 1),
    ("", [], 0),
    ("<think>target 22 3*5+7=22 22-22=0 ok ok no</think>", [("3*5+7", "22", 22, "ok", True, True)], 0),
])
def test_parse_checks_table(completion, expected, revisions):
    assert [tuple(c) for c in parse_checks(completion, EX)] == expected
    assert count_revisions(completion, EX) == revisions


def test_summarize_checks():
    completions = ["<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>",
                   "<think>target 22 3+5+7=22 22-22=0 ok</think><answer>3+5+7</answer>",
                   "<think>target 22 3+5+7=15</think><answer>3+5+7</answer>"]
    summary = summarize_checks(completions, [EX] * 3, [True, False, False])
    assert summary["checks_per_completion"] == 1.0 and summary["revisions_per_completion"] == pytest.approx(1 / 3)
    assert summary["ok_marks"] == 2 and summary["ok_precision"] == 0.5
    assert summary["no_marks"] == 1 and summary["no_precision"] == 1.0
    assert summary["accuracy_by_checks"] == {0: {"pass_rate": 0.0, "count": 1}, 1: {"pass_rate": 0.0, "count": 1},
                                             2: {"pass_rate": 1.0, "count": 1}}
    empty = summarize_checks(["<answer>1</answer>"], [EX])
    assert empty["ok_precision"] is None and empty["no_precision"] is None and "accuracy_by_checks" not in empty
    with pytest.raises(ValueError):
        summarize_checks(["a"], [EX, EX])


# --- the reliability gate ---


class FakeEngine:
    """Returns the same literal completions for every prompt."""

    def __init__(self, texts):
        self.texts = texts

    def generate(self, prompts, n, params):
        return [[Generation([1], [2] * len(t), t, False) for t in self.texts[:n]] for _ in prompts]


def test_check_reliability_with_a_fake_engine():
    from r1lab.templates import PromptTemplate, TemplateConfig

    task = _task()
    template = PromptTemplate(TemplateConfig(kind="r1_zero"))
    texts = ["<think>target 999 1+1+1=3 3-999=-996 no 1*1*1=1 1-999=-998 ok</think><answer>1</answer>",
             "<think>target 999 1+1+1=3 3-999=-996 ok</think><answer>1+1+1</answer>",
             "<think>target 999 1+1+1=3</think><answer>1+1+1</answer>"]
    result = check_reliability(FakeEngine(texts), task, template, num_problems=5, k=3, temperature=1.0, top_p=1.0,
                               max_new_tokens=32, seed=0)
    assert result["num_problems"] == 5 and result["k"] == 3
    assert result["ok_precision"] == 0.0 and result["no_precision"] == 1.0  # no target is 999 or uses 1,1,1 only
    assert result["checks_per_completion"] == 1.0
    assert result["accuracy_by_checks"] == {0: {"pass_rate": 0.0, "count": 5}, 1: {"pass_rate": 0.0, "count": 5},
                                            2: {"pass_rate": 0.0, "count": 5}}
    json.dumps(result)
    # the R1 evaluation of a check task reports the checks too (summary.json, one row per stage)
    from r1lab.evaluate import evaluate_model

    summary = evaluate_model(FakeEngine(texts), task, template, num_problems=5, k=3, temperature=0.6, top_p=0.95,
                             max_new_tokens=32, seed=0)
    # the task's metrics (task.metrics), rounded to 4 places
    assert summary["checks/per_completion"] == 1.0 and summary["checks/revisions_per_completion"] == round(1 / 3, 4)
    assert summary["checks/ok_precision"] == 0.0 and summary["checks/no_precision"] == 1.0
    assert [summary[f"accuracy/by_checks/{n}"] for n in (0, 1, 2)] == [0.0, 0.0, 0.0]
    assert "accuracy/by_checks/3+" not in summary
    arithmetic = evaluate_model(FakeEngine(["<think>1</think><answer>2</answer>"]), get_task("arithmetic"),
                                template, num_problems=2, k=1, temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    assert not any(key.startswith(("checks", "accuracy/by_checks")) for key in arithmetic)


# --- rollout metrics ---


def _rollout(responses, examples, lengths):
    generations = [Generation([1], [2] * n, r, False) for r, n in zip(responses, lengths)]
    scores = ScoreResult(total=[0.0] * len(responses), per_reward={"accuracy": [0.0] * len(responses)}, errors={})
    return Rollout(examples, generations, responses, scores, torch.zeros(len(responses)), None, 2)


def test_rollout_metrics_add_checks_for_countdown_tasks_and_length_percentiles_always():
    ex = dict(EX)
    responses = ["<think>target 22 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>",
                 "<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>",
                 "<think>target 22 3+5+7=15 15-22=-7 no 5+7-3=9 9-22=-13 no 7*3+5=26 26-22=4 ok</think>"
                 "<answer>7*3+5</answer>",
                 "<think>target 22 3+5+7=15</think><answer>3+5+7</answer>"]
    metrics = rollout_metrics(_rollout(responses, [ex] * 4, [10, 20, 30, 40]), _task())
    assert metrics["completion/length_p50"] == 25.0
    assert metrics["completion/length_p10"] == pytest.approx(13.0)
    assert metrics["completion/length_p90"] == pytest.approx(37.0)
    assert metrics["checks/per_completion"] == 1.5 and metrics["checks/revisions_per_completion"] == 0.75
    assert metrics["checks/ok_precision"] == pytest.approx(2 / 3) and metrics["checks/no_precision"] == 1.0
    assert metrics["accuracy/by_checks/0"] == 0.0 and metrics["accuracy/by_checks/1"] == 1.0
    assert metrics["accuracy/by_checks/2"] == 1.0 and metrics["accuracy/by_checks/3+"] == 0.0
    assert "completion/length_mean" in metrics and "reward/accuracy" in metrics

    plain = {"prompt": "1+1", "answer": "2", "verifier": "integer", "task": "arithmetic"}
    metrics = rollout_metrics(_rollout(["<answer>2</answer>", "<answer>3</answer>"], [plain] * 2, [5, 5]),
                              get_task("arithmetic"))
    assert not any(k.startswith(("checks/", "accuracy/by_checks")) for k in metrics)
    assert metrics["completion/length_p10"] == metrics["completion/length_p90"] == 5.0


# --- the task metrics hook (task.metrics, through task_metrics) ---

COUNTDOWN = {"prompt": "2 3 4 -> 14", "answer": "2+3*4", "verifier": "countdown", "task": "countdown",
             "numbers": [2, 3, 4], "target": 14}
ARITHMETIC = {"prompt": "1+1", "answer": "2", "verifier": "integer", "task": "arithmetic"}
CHECKED = [  # (example, response): checks, revisions, correct
    (EX, "<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>"),  # 2, 1, yes
    (EX, "<think>target 22 3+5+7=15 15-22=-7 ok</think><answer>3+5+7</answer>"),  # 1 ("ok" on a miss), 0, no
    (COUNTDOWN, "<think>2*3+4=10 no 2+3+4=9 no 3*4-2=10 no 2+3*4=14 ok</think><answer>2+3*4</answer>"),  # 4, 3, yes
    (COUNTDOWN, "<think>2+3+4=9 no 2*3*4=24 no 4*3+2=14 ok</think><answer>4*3-2</answer>"),  # 3, 2, no
    (COUNTDOWN, "<answer>2*3*4</answer>"),  # 0, 0, no
    (ARITHMETIC, "<think>1+1=2 ok</think><answer>2</answer>"),  # not a check task: not counted
]


def test_countdown_metrics_from_literal_completions():
    examples, responses = [ex for ex, _ in CHECKED], [r for _, r in CHECKED]
    expected = {
        "checks/per_completion": 10 / 5,  # 2 + 1 + 4 + 3 + 0 checks over the five check-task completions
        "checks/revisions_per_completion": 6 / 5,  # 1 + 0 + 3 + 2 + 0
        "checks/ok_precision": 3 / 4,  # four "ok" marks, three on real hits
        "checks/no_precision": 1.0,  # six "no" marks, all on real misses
        "accuracy/by_checks/0": 0.0, "accuracy/by_checks/1": 0.0, "accuracy/by_checks/2": 1.0,
        "accuracy/by_checks/3+": 0.5,  # 4 checks (right) and 3 checks (wrong) share the bucket
    }
    for task in (_task(), get_task("countdown")):  # countdown_checks inherits countdown's hook
        assert task_metrics(task, examples, responses) == pytest.approx(expected)
        assert task.metrics(examples, responses) == pytest.approx(expected)


def test_countdown_metrics_leave_out_what_is_not_there():
    # no marks: no precision; only the buckets that have completions
    assert task_metrics(_task(), [COUNTDOWN, COUNTDOWN], ["<answer>2+3*4</answer>", "<answer>2*3*4</answer>"]) == {
        "checks/per_completion": 0.0, "checks/revisions_per_completion": 0.0, "accuracy/by_checks/0": 0.5}
    only_no = task_metrics(_task(), [COUNTDOWN], ["<think>2+3+4=9 no</think><answer>2+3+4</answer>"])
    assert only_no["checks/no_precision"] == 1.0 and "checks/ok_precision" not in only_no
    assert task_metrics(_task(), [ARITHMETIC], ["<think>1+1=2 ok</think><answer>2</answer>"]) == {}
    assert task_metrics(_task(), [], []) == {}
    with pytest.raises(ValueError, match="pair up"):
        task_metrics(_task(), [EX, EX], ["<answer>1</answer>"])


def test_tasks_without_the_hook_have_no_metrics():
    assert task_metrics(get_task("arithmetic"), [ARITHMETIC], ["<answer>2</answer>"]) == {}
    assert task_metrics(get_task("domain"), [ARITHMETIC], ["<answer>2</answer>"]) == {}


# --- the reasoning plot ---


def test_plot_reasoning_metrics(tmp_path):
    assert plot_reasoning_metrics(tmp_path) is None
    rows = [{"stage": "grpo", "step": s, "reward/mean": 0.1, "completion/length_p10": 10 + s,
             "completion/length_p50": 20 + s, "completion/length_p90": 30 + s, "checks/per_completion": s / 10,
             "checks/revisions_per_completion": s / 20, "accuracy/by_checks/0": 0.1, "accuracy/by_checks/3+": 0.5}
            for s in range(12)]
    rows.append({"stage": "grpo", "step": 12, "eval/pass@1": 0.3})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = plot_reasoning_metrics(tmp_path)
    assert path.name == "reasoning_curves.png" and path.read_bytes().startswith(b"\x89PNG")
    assert path.stat().st_size > 5_000
    assert "self-checks" in write_report(tmp_path).read_text()


# --- the gate stage ---


def test_gate_failures_name_each_reason():
    from r1lab.train.check_gate import CheckGateConfig, gate_failures

    cfg = CheckGateConfig(min_ok_precision=0.6, min_no_precision=0.9)
    base = {"k": 4, "num_problems": 10}
    assert gate_failures({**base, "ok_precision": 0.7, "no_precision": 0.95}, cfg) == []
    assert gate_failures({**base, "ok_precision": 0.25, "no_precision": 0.95}, cfg) == ["ok_precision 0.25 < 0.6"]
    assert gate_failures({**base, "ok_precision": None, "no_precision": 0.5}, cfg) == [
        "no 'ok' marks in 40 completions", "no_precision 0.50 < 0.9"]


def test_gate_stage_reports_and_stops_when_asked(tmp_path, tiny_checkpoint):
    import yaml

    from r1lab.pipeline import run_recipe
    from r1lab.train.check_gate import CheckGateFailed

    def recipe(on_fail):
        path = tmp_path / f"{on_fail}.yaml"
        path.write_text(yaml.safe_dump({
            "name": on_fail, "output_dir": str(tmp_path / "runs"), "model": str(tiny_checkpoint), "threads": 1,
            "task": {"name": "countdown_checks", "options": {"max_number": 4, "int_tokens": False}},
            "stages": {"gate": {"kind": "check_gate", "num_problems": 3, "k": 2, "max_new_tokens": 8,
                                "on_fail": on_fail}}}))
        return path

    # a random model makes no marks: the gate fails, warns and passes the model through
    run_dir = run_recipe(recipe("warn"), quiet=True)
    entry = json.loads((run_dir / "summary.json").read_text())["stages"][0]
    assert entry["model"] == str(tiny_checkpoint) and entry["gate"]["passed"] is False
    assert entry["gate"]["failures"] and "not reliable" in entry["warnings"][0]
    assert json.loads((run_dir / "gate" / "gate.json").read_text())["num_problems"] == 3
    with pytest.raises(CheckGateFailed, match="not reliable"):
        run_recipe(recipe("stop"), quiet=True)
