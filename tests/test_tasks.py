"""Tasks: seeded examples, disjoint splits, verifier tables, corpus styles, JSONL errors, the metrics hook."""

import json
import random
import subprocess
import sys

import pytest

from r1lab import rewards, tasks
from r1lab.rewards import extract_answer, format_reward
from r1lab.tasks import VERIFIERS, get_task, task_metrics, verify
from r1lab.tasks.countdown import evaluate_countdown_expression
from r1lab.tasks.splits import split_of
from r1lab.tasks.verifiers import parse_number

ARITHMETIC = {"prompt": "347+589", "answer": "936", "verifier": "integer"}
NEGATIVE = {"prompt": "347-589", "answer": "-242", "verifier": "integer"}
COUNTDOWN = {"prompt": "3 5 7 -> 22", "answer": "3*5+7", "verifier": "countdown", "numbers": [3, 5, 7], "target": 22}
REPEATED = {"prompt": "2 2 6 -> 10", "answer": "2*2+6", "verifier": "countdown", "numbers": [2, 2, 6], "target": 10}


# ---------------------------------------------------------------- verifier tables


@pytest.mark.parametrize(
    "answer, example, expected",
    [
        ("936", ARITHMETIC, True),
        ("  936 ", ARITHMETIC, True),
        ("+936", ARITHMETIC, True),
        ("0936", ARITHMETIC, True),  # same integer
        ("937", ARITHMETIC, False),
        ("93 6", ARITHMETIC, False),
        ("936abc", ARITHMETIC, False),
        ("936.0", ARITHMETIC, False),
        ("", ARITHMETIC, False),
        ("   ", ARITHMETIC, False),
        ("-", ARITHMETIC, False),
        ("-242", NEGATIVE, True),
        (" -242", NEGATIVE, True),
        ("242", NEGATIVE, False),
        ("- 242", NEGATIVE, False),
    ],
)
def test_integer_verifier(answer, example, expected):
    assert verify(answer, example) is expected


@pytest.mark.parametrize(
    "answer, example, expected",
    [
        ("3*5+7", COUNTDOWN, True),  # the reference
        ("7+5*3", COUNTDOWN, True),  # another valid expression counts too
        ("(7+5*3)", COUNTDOWN, True),
        (" 5 * 3 + 7 ", COUNTDOWN, True),
        ("3*5+7=22", COUNTDOWN, False),  # an equation, not an expression
        ("3+5+7", COUNTDOWN, False),  # valid use, wrong value
        ("3*5+8", COUNTDOWN, False),  # a number not given
        ("3*5+7+3", COUNTDOWN, False),  # a number reused
        ("3*7+1", COUNTDOWN, False),  # wrong numbers
        ("15+7", COUNTDOWN, False),  # numbers not used as given
        ("3*5", COUNTDOWN, False),  # a number missing
        ("22", COUNTDOWN, False),
        ("7/(5-5)+3", COUNTDOWN, False),  # division by zero
        ("3*5+7/0", COUNTDOWN, False),
        ("__import__('os').system('true')", COUNTDOWN, False),
        ("2**10", COUNTDOWN, False),
        ("3*5**1+7", COUNTDOWN, False),
        ("(3*5)//1+7", COUNTDOWN, False),
        ("-3+5*5", COUNTDOWN, False),  # unary signs are not allowed
        ("3.0*5+7", COUNTDOWN, False),
        ("0x3*5+7", COUNTDOWN, False),
        ("garbage", COUNTDOWN, False),
        ("3*5+", COUNTDOWN, False),
        ("((((3*5+7", COUNTDOWN, False),
        ("(" * 300 + "3" + ")" * 300, COUNTDOWN, False),  # length limit
        ("", COUNTDOWN, False),
        ("2*2+6", REPEATED, True),  # a repeated number is used as often as given
        ("2*6-2", REPEATED, True),
        ("2*2+6+2", REPEATED, False),
        ("2+6", REPEATED, False),
    ],
)
def test_countdown_verifier(answer, example, expected):
    assert verify(answer, example) is expected


def test_countdown_division_is_exact():
    example = {"verifier": "countdown", "numbers": [7, 2, 2], "target": 7}
    assert verify("7/2*2", example)  # 3.5 * 2, exactly 7
    value, used = evaluate_countdown_expression("7/2")
    assert value.numerator == 7 and value.denominator == 2 and used == [7, 2]


@pytest.mark.parametrize(
    "answer, reference, expected",
    [
        ("Paris", "Paris", True),
        ("  Paris\n", "Paris", True),
        ("paris", "Paris", False),
        ("Paris.", "Paris", False),
        ("", "Paris", False),
    ],
)
def test_exact_verifier(answer, reference, expected):
    assert verify(answer, {"answer": reference, "verifier": "exact"}) is expected


@pytest.mark.parametrize(
    "answer, reference, expected",
    [
        ("42", "42", True),
        (" 42 ", "42", True),
        ("42.0", "42", True),
        ("42.0000001", "42", True),  # within 1e-6 relative
        ("42.001", "42", False),
        ("1,000", "1000", True),
        ("1,000.5", "1000.5", True),
        ("10,00", "1000", False),  # not a thousands grouping
        ("3/4", "0.75", True),
        ("0.75", "3/4", True),
        ("6/8", "3/4", True),
        ("-3/4", "-0.75", True),
        (".5", "0.5", True),
        ("0", "0", True),
        ("0.0000001", "0", False),  # exact at zero
        ("3/0", "0", False),
        ("1e3", "1000", False),  # only integers, decimals and a/b
        ("forty-two", "42", False),
        ("", "42", False),
        ("nan", "42", False),
        ("inf", "42", False),
    ],
)
def test_number_verifier(answer, reference, expected):
    assert verify(answer, {"answer": reference, "verifier": "number"}) is expected


def test_parse_number_values():
    assert parse_number("1,234.5") == parse_number("2469/2")
    assert parse_number("x") is None


def test_verify_none_answer_is_false_and_unknown_verifier_is_named():
    assert verify(None, ARITHMETIC) is False
    with pytest.raises(ValueError, match="'regex'.*countdown"):
        verify("1", {"answer": "1", "verifier": "regex"})
    with pytest.raises(ValueError, match="no 'verifier' field"):
        verify("1", {"answer": "1"})


def test_verifier_registry_names():
    assert set(VERIFIERS) >= {"integer", "countdown", "exact", "number"}


# ---------------------------------------------------------------- registry


def test_get_task_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="arithmetic.*countdown.*jsonl"):
        get_task("sudoku")


def test_get_task_unknown_option_is_named():
    with pytest.raises(TypeError, match="'digit'.*digits"):
        get_task("arithmetic", digit=3)


@pytest.mark.parametrize(
    "name, options",
    [
        ("arithmetic", {"ops": "/"}),
        ("arithmetic", {"ops": ""}),
        ("arithmetic", {"digits": 0}),
        ("arithmetic", {"test_fraction": 0.0}),
        ("countdown", {"num_count": 1}),
        ("countdown", {"ops": "+^"}),
        ("countdown", {"min_target": 50, "max_target": 10}),
    ],
)
def test_bad_task_options_are_rejected(name, options):
    with pytest.raises(ValueError, match=next(iter(options))):
        get_task(name, **options)


# ---------------------------------------------------------------- generated tasks

GENERATED = [
    ("arithmetic", {}),
    ("arithmetic", {"digits": 2, "ops": "+-*"}),
    ("countdown", {}),
    ("countdown", {"num_count": 4, "ops": "+-*/", "max_target": 50}),
]


@pytest.mark.parametrize("name, options", GENERATED)
def test_examples_are_deterministic_under_seed(name, options):
    task = get_task(name, **options)
    assert task.examples("train", 50, seed=3) == task.examples("train", 50, seed=3)
    assert task.examples("train", 50, seed=3) != task.examples("train", 50, seed=4)


@pytest.mark.parametrize("name, options", GENERATED)
def test_examples_are_distinct_and_verify_against_their_own_answer(name, options):
    task = get_task(name, **options)
    examples = task.examples("train", 300, seed=0)
    assert len(examples) == 300
    assert len({example["prompt"] for example in examples}) == 300
    for example in examples:
        assert {"prompt", "answer", "verifier"} <= set(example)
        assert verify(example["answer"], example)


def _canonical(example):
    if example["verifier"] == "countdown":
        return (tuple(sorted(example["numbers"])), example["target"])
    a, b = example["operands"]
    return (tuple(sorted((a, b))) if example["op"] in "+*" else (a, b), example["op"])


@pytest.mark.parametrize("name, options", GENERATED)
def test_train_and_test_never_share_a_problem(name, options):
    task = get_task(name, **options)
    test = {_canonical(e) for seed in range(3) for e in task.examples("test", 200, seed=seed)}
    train = {_canonical(e) for seed in range(3) for e in task.examples("train", 1000, seed=seed)}
    assert test and train
    assert not test & train


def test_split_membership_does_not_depend_on_n_or_seed():
    task = get_task("arithmetic", digits=2)
    for example in task.examples("test", 100, seed=7) + task.examples("test", 5, seed=1):
        a, b = sorted(example["operands"])
        assert split_of(f"{a}+{b}", task.test_fraction) == "test"


def test_small_space_still_gives_n_examples_and_stays_disjoint():
    task = get_task("arithmetic", digits=1)  # 55 distinct sums: fewer than asked for
    train = task.examples("train", 200, seed=0)
    test = task.examples("test", 200, seed=0)
    assert len(train) == len(test) == 200
    assert not {_canonical(e) for e in train} & {_canonical(e) for e in test}


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="'valid'"):
        get_task("arithmetic").examples("valid", 3)


def test_example_shapes():
    arithmetic = get_task("arithmetic").examples("train", 1)[0]
    a, b = arithmetic["operands"]
    assert arithmetic["prompt"] == f"{a}+{b}" and arithmetic["answer"] == str(a + b)
    assert 100 <= a <= 999 and 100 <= b <= 999
    countdown = get_task("countdown").examples("train", 1)[0]
    numbers, target = countdown["numbers"], countdown["target"]
    assert countdown["prompt"] == " ".join(map(str, numbers)) + f" -> {target}"
    assert len(numbers) == 3 and all(1 <= n <= 9 for n in numbers) and 1 <= target <= 100


# ---------------------------------------------------------------- corpus styles


def _documents(task, style, count=300):
    rng = random.Random(0)
    examples = task.examples("train", count, seed=0)
    return [(example, task.corpus_document(example, rng, style)) for example in examples]


@pytest.mark.parametrize("ops", ["+", "-", "*", "+-*"])
def test_arithmetic_worked_is_correct_and_well_formed(ops):
    for example, document in _documents(get_task("arithmetic", ops=ops), "worked"):
        assert format_reward(document, example) == 1.0, document
        assert verify(extract_answer(document), example), document


@pytest.mark.parametrize("ops", ["+", "-", "*"])
@pytest.mark.parametrize("digits", [1, 3])
def test_arithmetic_worked_error_is_wrong_but_well_formed(ops, digits):
    task = get_task("arithmetic", ops=ops, digits=digits)
    for example, document in _documents(task, "worked_error"):
        assert format_reward(document, example) == 1.0, document
        assert not verify(extract_answer(document), example), document


def _addition_slips(trace):
    """Replays a + trace: counts steps that break the rules and returns the number its digits spell."""
    slips, digits, carry = 0, [], 0
    for step in trace.split():
        left, total = step.split("=")
        terms = [int(t) for t in left.split("+")]
        slips += (len(terms) == 3) != bool(carry)  # a carry forgotten (or invented)
        slips += sum(terms) != int(total)  # a column summed wrong
        digits.append(int(total) % 10)
        carry = int(total) // 10
    if carry:
        digits.append(carry)
    return slips, int("".join(map(str, reversed(digits))))


def _multiplication_slips(trace, a):
    slips, partials = 0, []
    *partial_steps, sum_step = trace.split() if " " in trace else (trace, None)
    for step in partial_steps if sum_step else [trace]:
        left, product = step.split("=")
        multiplicand, multiplier = map(int, left.split("*"))
        assert multiplicand == a
        slips += multiplicand * multiplier != int(product)
        partials.append(int(product))
    if sum_step is None:
        return slips, partials[0]
    terms, total = sum_step.split("=")
    assert [int(t) for t in terms.split("+")] == partials  # the sum uses the partials as written
    slips += sum(partials) != int(total)
    return slips, int(total)


@pytest.mark.parametrize("style, expected_slips", [("plain", 0), ("plain_error", 1)])
@pytest.mark.parametrize("digits", [1, 2, 3])
def test_addition_error_is_one_slip_carried_through_consistently(style, expected_slips, digits):
    task = get_task("arithmetic", digits=digits)
    for example, document in _documents(task, style):
        trace, answer = document.split(" so ")
        slips, spelled = _addition_slips(trace)
        assert slips == expected_slips, document
        assert spelled == int(answer), document  # every later column used the wrong carry consistently


@pytest.mark.parametrize("style, expected_slips", [("plain", 0), ("plain_error", 1)])
@pytest.mark.parametrize("digits", [1, 3])
def test_multiplication_error_is_one_slip_carried_through_consistently(style, expected_slips, digits):
    task = get_task("arithmetic", digits=digits, ops="*")
    for example, document in _documents(task, style):
        trace, answer = document.split(" so ")
        slips, total = _multiplication_slips(trace, example["operands"][0])
        assert slips == expected_slips, document
        assert total == int(answer), document


def test_subtraction_error_is_one_slip():
    task = get_task("arithmetic", ops="-")
    for example, document in _documents(task, "plain_error"):
        trace, answer = document.split(" so ")
        steps = [s for s in trace.split() if "<" not in s]
        slips = 0
        for step in steps:
            left, written = step.split("=")
            terms = [int(t) for t in left.replace("-", " -").split()]
            slips += sum(terms) != int(written)
        forgotten = int(answer) != int(example["answer"]) and slips == 0
        assert slips + forgotten == 1, document


def test_arithmetic_addition_trace_matches_the_brief():
    task = get_task("arithmetic")
    example = task.make_example(347, "+", 589)
    rng = random.Random(0)
    assert task.corpus_document(example, rng, "worked") == "<think>7+9=16 4+8+1=13 3+5+1=9</think><answer>936</answer>"
    assert task.corpus_document(example, rng, "plain") == "7+9=16 4+8+1=13 3+5+1=9 so 936"
    assert task.corpus_document(example, rng, "answer_only") == "936"
    subtraction = task.corpus_document(task.make_example(347, "-", 189), rng, "plain")
    assert subtraction == "17-9=8 14-8-1=5 3-1-1=1 so 158"
    negative = task.corpus_document(task.make_example(347, "-", 589), rng, "plain")
    assert negative == "347<589 9-7=2 8-4=4 5-3=2 so -242"
    product = task.corpus_document(task.make_example(347, "*", 589), rng, "plain")
    assert product == "347*9=3123 347*80=27760 347*500=173500 3123+27760+173500=204383 so 204383"


@pytest.mark.parametrize("style", ["plain", "plain_error", "answer_only"])
def test_arithmetic_untagged_styles_have_no_tags(style):
    for example, document in _documents(get_task("arithmetic", ops="+-*"), style, 100):
        assert not any(tag in document for tag in ("<think>", "</think>", "<answer>", "</answer>")), document


def test_plain_answer_follows_so():
    task = get_task("arithmetic", ops="+-*")
    for example, document in _documents(task, "plain", 100):
        assert document.rsplit(" so ", 1)[1] == example["answer"]


def test_countdown_search_and_guess_are_well_formed():
    task = get_task("countdown")
    for example, document in _documents(task, "search"):
        assert format_reward(document, example) == 1.0
        assert verify(extract_answer(document), example), document
        marks = document.split("</think>")[0].split()
        assert marks[-1] == "ok" and "ok" not in marks[:-1]  # stops at the first hit
    guesses = _documents(task, "guess")
    outcomes = {verify(extract_answer(document), example) for example, document in guesses}
    assert outcomes == {True, False}  # guesses are sometimes wrong
    for example, document in guesses:
        assert format_reward(document, example) == 1.0
        think = document[len("<think>") : document.index("</think>")]
        expression, value = think.split("=")
        assert expression == extract_answer(document)


def test_countdown_search_marks_are_honest():
    task = get_task("countdown", ops="+-*/")
    for example, document in _documents(task, "search"):
        for candidate in document[len("<think>") : document.index("</think>")].split(" ok")[0].split(" no"):
            expression, value = candidate.strip().split("=")
            computed, _ = evaluate_countdown_expression(expression)
            assert str(computed) == value


def test_countdown_plain_is_untagged_expression_and_value():
    task = get_task("countdown")
    for example, document in _documents(task, "plain", 100):
        assert "<" not in document
        expression, value = document.split("=")
        assert int(value) == example["target"] and verify(expression, example)


@pytest.mark.parametrize("name", ["arithmetic", "countdown"])
def test_corpus_document_rejects_unknown_style(name):
    task = get_task(name)
    with pytest.raises(ValueError, match="'essay'"):
        task.corpus_document(task.examples("train", 1)[0], random.Random(0), "essay")


# ---------------------------------------------------------------- jsonl


def _write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


def test_jsonl_reads_rows_keeps_extra_fields_and_splits_disjointly(tmp_path):
    rows = [{"prompt": f"q{i}", "answer": str(i), "source": "unit"} for i in range(200)]
    task = get_task("jsonl", train_path=_write_jsonl(tmp_path / "data.jsonl", rows), verifier="number")
    train, test = task.examples("train", 0), task.examples("test", 0)
    assert len(train) + len(test) == 200 and test
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert train[0]["source"] == "unit" and train[0]["verifier"] == "number"
    sample = task.examples("train", 10, seed=1)
    assert len(sample) == 10 and sample == task.examples("train", 10, seed=1)
    assert task.examples("train", 10_000) == train  # n larger than the split: every row, in file order


def test_jsonl_separate_test_file_custom_fields_and_numeric_answers(tmp_path):
    train_path = _write_jsonl(tmp_path / "train.jsonl", [{"question": "1+1", "solution": 2}, ""])
    test_path = _write_jsonl(tmp_path / "test.jsonl", [{"question": "2+2", "solution": "4"}])
    task = get_task(
        "jsonl", train_path=train_path, test_path=test_path, prompt_field="question", answer_field="solution"
    )
    assert task.examples("train", 5) == [
        {"question": "1+1", "solution": 2, "prompt": "1+1", "answer": "2", "verifier": "exact"}
    ]
    assert task.examples("test", 5)[0]["answer"] == "4"


def test_jsonl_rows_may_name_their_own_verifier(tmp_path):
    row = {"prompt": "3 5 7 -> 22", "answer": "3*5+7", "verifier": "countdown", "numbers": [3, 5, 7], "target": 22}
    task = get_task("jsonl", train_path=_write_jsonl(tmp_path / "d.jsonl", [row]), test_path=None, test_fraction=0.01)
    example = task.examples("train", 1)[0]
    assert verify("7+3*5", example)


def test_jsonl_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl.*current directory"):
        get_task("jsonl", train_path=str(tmp_path / "nope.jsonl"))


def test_jsonl_bad_json_names_file_and_line(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "answer": "b"}, "", '{"prompt": "c", '])
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: not valid JSON"):
        get_task("jsonl", train_path=path)


def test_jsonl_missing_answer_field_names_line_and_keys(tmp_path):
    path = _write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}, {"prompt": "c", "reply": "d"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:2: row has no 'answer' field \(keys: prompt, reply\)"):
        get_task("jsonl", train_path=path)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"prompt": ["a"], "answer": "b"}, r"d\.jsonl:1: 'prompt' must be a string, got list"),
        ({"answer": "b"}, r"d\.jsonl:1: row has no 'prompt' field"),
        ({"prompt": "a", "answer": None}, r"d\.jsonl:1: 'answer' must be a string or a number"),
        ('["a", "b"]', r"d\.jsonl:1: each line must be a JSON object"),
        ({"prompt": "a", "answer": "b", "verifier": "regex"}, r"d\.jsonl:1: unknown verifier 'regex'"),
        ({"prompt": "a", "answer": "many", "verifier": "number"}, r"d\.jsonl:1: .*'number' verifier"),
        ({"prompt": "a", "answer": "3*5+7", "verifier": "countdown"}, r"d\.jsonl:1: .*'countdown' verifier"),
    ],
)
def test_jsonl_row_errors_name_the_problem(tmp_path, row, message):
    with pytest.raises(ValueError, match=message):
        get_task("jsonl", train_path=_write_jsonl(tmp_path / "d.jsonl", [row]))


def test_jsonl_has_no_corpus_and_empty_split_is_explained(tmp_path):
    task = get_task("jsonl", train_path=_write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "answer": "b"}]))
    with pytest.raises(NotImplementedError, match="no pretraining corpus"):
        task.corpus_document({"prompt": "a", "answer": "b"}, random.Random(0), "worked")
    empty_split = "test" if split_of("a", 0.1) == "train" else "train"
    with pytest.raises(ValueError, match=f"{empty_split} split .* is empty"):
        task.examples(empty_split, 1)


# ---------------------------------------------------------------- layering and the metrics hook


def test_tasks_import_neither_rewards_nor_data():
    code = ("import sys, r1lab.tasks; "
            "print(sorted(m for m in sys.modules if m.startswith(('r1lab.rewards', 'r1lab.data'))))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
    assert rewards.extract_answer is tasks.extract_answer  # the tasks own it; the rewards re-export it
    assert VERIFIERS["code"].__module__ == "r1lab.tasks.verifiers_code"


def test_mixture_metrics_accuracy_per_source_task_and_each_parts_own_metrics():
    mixture = get_task("mixture", parts=[{"name": "arithmetic", "options": {"digits": 1}},
                                         {"name": "countdown_checks"}, {"name": "countdown"}])
    arithmetic = {"prompt": "1+1", "answer": "2", "verifier": "integer", "task": "arithmetic"}
    checks = {"prompt": "3 5 7 -> 22", "answer": "3*5+7", "verifier": "countdown", "task": "countdown_checks",
              "numbers": [3, 5, 7], "target": 22}
    countdown = {"prompt": "2 3 4 -> 14", "answer": "2+3*4", "verifier": "countdown", "task": "countdown",
                 "numbers": [2, 3, 4], "target": 14}
    examples = [arithmetic, arithmetic, checks, countdown]
    responses = ["<answer>2</answer>",  # right
                 "<think>1+1=3</think><answer>3</answer>",  # wrong
                 "<think>target 22 3+5+7=15 15-22=-7 no 3*5+7=22 22-22=0 ok</think><answer>3*5+7</answer>",  # right
                 "<think>2+3+4=9 no 2*3*4=24 no 4*3+2=14 ok</think><answer>4*3-2</answer>"]  # wrong
    # countdown and countdown_checks share one implementation: their completions are read together, one set of keys
    assert task_metrics(mixture, examples, responses) == pytest.approx({
        "accuracy/task_arithmetic": 0.5, "accuracy/task_countdown": 0.0, "accuracy/task_countdown_checks": 1.0,
        "checks/per_completion": (2 + 3) / 2, "checks/revisions_per_completion": (1 + 2) / 2,
        "checks/ok_precision": 1.0, "checks/no_precision": 1.0,
        "accuracy/by_checks/2": 1.0, "accuracy/by_checks/3+": 0.0})
    # one source task: no accuracy per task (the rollout's own accuracy says it); the part's metrics still count
    assert task_metrics(mixture, examples[:2], responses[:2]) == {}
    assert task_metrics(mixture, examples[2:3], responses[2:3]) == pytest.approx({
        "checks/per_completion": 2.0, "checks/revisions_per_completion": 1.0, "checks/ok_precision": 1.0,
        "checks/no_precision": 1.0, "accuracy/by_checks/2": 1.0})


def test_nested_mixture_metrics_reach_the_inner_parts():
    inner = {"name": "mixture", "options": {"parts": [{"name": "countdown"}]}}
    mixture = get_task("mixture", parts=[{"name": "arithmetic", "options": {"digits": 1}}, inner])
    countdown = {"prompt": "2 3 4 -> 14", "answer": "2+3*4", "verifier": "countdown", "task": "countdown",
                 "numbers": [2, 3, 4], "target": 14}
    arithmetic = {"prompt": "1+1", "answer": "2", "verifier": "integer", "task": "arithmetic"}
    metrics = task_metrics(mixture, [arithmetic, countdown], ["<answer>2</answer>", "<think>2+3*4=14 ok</think>"])
    assert metrics == pytest.approx({"accuracy/task_arithmetic": 1.0, "accuracy/task_countdown": 0.0,
                                     "checks/per_completion": 1.0, "checks/revisions_per_completion": 0.0,
                                     "checks/ok_precision": 1.0, "accuracy/by_checks/1": 0.0})
