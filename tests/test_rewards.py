"""Rewards: table tests of literal completions, the registry, and batch scoring with failing rewards."""

import logging
import math
import os
import signal
import sys
import textwrap
import threading

import pytest

from r1lab.rewards import (
    REWARDS,
    accuracy_reward,
    extract_answer,
    format_reward,
    get_reward,
    register_reward,
    score_completions,
    soft_format_reward,
)

ADDITION = {"prompt": "347+589", "answer": "936", "verifier": "integer"}
COUNTDOWN = {"prompt": "3 5 7 -> 22", "answer": "3*5+7", "verifier": "countdown", "numbers": [3, 5, 7], "target": 22}

# (completion, extracted answer, accuracy on ADDITION, strict format)
TABLE = [
    ("<think>7+9=16 4+8+1=13 3+5+1=9</think><answer>936</answer>", "936", 1.0, 1.0),
    ("<think>\nadd the columns\n</think>\n<answer> 936 </answer>\n", "936", 1.0, 1.0),
    ("  <think>a</think>  <answer>\n936\n</answer>  ", "936", 1.0, 1.0),
    ("<think>7+9=16</think><answer>935</answer>", "935", 0.0, 1.0),
    ("<think></think><answer>936</answer>", "936", 1.0, 1.0),  # empty think is well-formed
    ("<think>x</think><answer></answer>", "", 0.0, 1.0),
    ("936", None, 0.0, 0.0),  # no tags
    ("<answer>936</answer>", "936", 1.0, 0.0),  # no think block
    ("<think>x</think>936", None, 0.0, 0.0),  # answer outside tags
    ("<think>x</think> the answer is 936", None, 0.0, 0.0),
    ("<think>x</think><answer>1</answer><answer>936</answer>", "936", 1.0, 0.0),  # last wins; format 0
    ("<think>x</think><answer>936</answer><answer>1</answer>", "1", 0.0, 0.0),
    ("<think>x</think><answer>936</answer> done", "936", 1.0, 0.0),  # text after </answer>
    ("<think>x</think><answer>936</answer><think>y</think>", "936", 1.0, 0.0),
    ("<think>x</think><answer>936", None, 0.0, 0.0),  # unclosed answer
    ("<think>x<answer>936</answer>", "936", 1.0, 0.0),  # unclosed think
    ("<think>x</think><answer><answer>936</answer>", "936", 1.0, 0.0),  # nested: innermost complete block
    ("<think>a<think>b</think></think><answer>936</answer>", "936", 1.0, 0.0),  # nested think
    ("<think>a</think>b</think><answer>936</answer>", "936", 1.0, 0.0),  # two closes
    ("<think>x</think><think>y</think><answer>936</answer>", "936", 1.0, 0.0),  # two think blocks
    ("text<think>x</think><answer>936</answer>", "936", 1.0, 0.0),  # text before <think>
    ("<think>x</think>note<answer>936</answer>", "936", 1.0, 0.0),  # text between blocks
    ("<answer>936</answer><think>x</think>", "936", 1.0, 0.0),  # wrong order
    ("<think>x</think><answer>93 6</answer>", "93 6", 0.0, 1.0),
    ("<THINK>x</THINK><ANSWER>936</ANSWER>", None, 0.0, 0.0),  # tags are case-sensitive
    ("", None, 0.0, 0.0),
]


@pytest.mark.parametrize("completion, answer, accuracy, form", TABLE)
def test_extract_answer(completion, answer, accuracy, form):
    assert extract_answer(completion) == answer


@pytest.mark.parametrize("completion, answer, accuracy, form", TABLE)
def test_accuracy_reward(completion, answer, accuracy, form):
    assert accuracy_reward(completion, ADDITION) == accuracy


@pytest.mark.parametrize("completion, answer, accuracy, form", TABLE)
def test_format_reward(completion, answer, accuracy, form):
    assert format_reward(completion, ADDITION) == form


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>3*5=15 15+7=22</think><answer>3*5+7</answer>", 1.0),
        ("<think>x</think><answer>7+3*5</answer>", 1.0),  # any valid expression
        ("<think>x</think><answer>(5*3)+7</answer>", 1.0),
        ("<think>x</think><answer>3+5+7</answer>", 0.0),
        ("<think>x</think><answer>3*5+7=22</answer>", 0.0),
        ("<think>x</think><answer>22</answer>", 0.0),
        ("<think>x</think>3*5+7", 0.0),
    ],
)
def test_accuracy_reward_on_countdown(completion, expected):
    assert accuracy_reward(completion, COUNTDOWN) == expected


# ---------------------------------------------------------------- answers in tags, else in \boxed{}

HALF = {"prompt": "1/4 + 1/4?", "answer": "\\frac{1}{2}", "verifier": "math"}


@pytest.mark.parametrize("completion, answer", [
    ("<think>1/4+1/4</think> So the sum is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # nested braces balance
    ("first \\boxed{3}, then \\boxed{ 0.5 }", "0.5"),  # the last box, stripped
    ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces are literal: they do not close the box
    ("\\boxed {7}", "7"),
    ("\\boxed{7} and a box cut off \\boxed{\\frac{1}{", "7"),  # an unclosed box is skipped
    ("<answer>1/2</answer> \\boxed{9}", "1/2"),  # tags win over a box
    ("<answer>1/2 \\boxed{9}", "9"),  # unclosed tags: the box
    ("no answer at all {7}", None),
])
def test_extract_answer_reads_the_tags_else_the_last_box(completion, answer):
    assert extract_answer(completion) == answer
    assert extract_answer(completion, {"answer_format": "tags_or_boxed"}) == answer


def test_boxed_answer_without_tags_scores_with_the_math_verifier_unless_tags_are_demanded():
    completion = "<think>1/4+1/4</think> The answer is \\boxed{\\frac{1}{2}}"
    assert accuracy_reward(completion, HALF) == 1.0
    assert accuracy_reward(completion.replace("frac{1}{2}", "frac{1}{3}"), HALF) == 0.0
    tags_only = {**HALF, "answer_format": "tags"}
    assert extract_answer(completion, tags_only) is None
    assert accuracy_reward(completion, tags_only) == 0.0
    assert accuracy_reward("<think>x</think><answer>0.5</answer>", tags_only) == 1.0
    with pytest.raises(ValueError, match="unknown answer_format 'boxed'; choose one of tags_or_boxed, tags"):
        extract_answer(completion, {**HALF, "answer_format": "boxed"})


def test_accuracy_is_not_applicable_without_a_reference():
    assert accuracy_reward("<think>x</think><answer>1</answer>", {"prompt": "write a poem"}) is None
    assert accuracy_reward("<answer>1</answer>", {"prompt": "p", "answer": None, "verifier": "exact"}) is None


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>x</think><answer>1</answer>", 1.0),
        ("<think>x</think><answer>1</answer> trailing", 1.0),  # soft: tags only, in order
        ("<think>x</think>1", 0.5),
        ("<think>x", 0.25),
        ("<answer>1</answer>", 0.5),
        ("<answer>1</answer><think>x</think>", 0.5),  # out of order: only the first pair in order counts
        ("<think>x</think><answer>1</answer><answer>2</answer>", 0.5),  # answer tags not unique
        ("", 0.0),
    ],
)
def test_soft_format_reward(completion, expected):
    assert soft_format_reward(completion, ADDITION) == expected


# ---------------------------------------------------------------- registry


def test_builtin_rewards_are_registered():
    assert get_reward("accuracy") is accuracy_reward
    assert get_reward("format") is format_reward
    assert get_reward("format_soft") is soft_format_reward


def test_register_reward_and_conflicts():
    @register_reward("unit_test_length")
    def length_reward(completion, example):
        return float(len(completion))

    assert get_reward("unit_test_length") is length_reward
    with pytest.raises(ValueError, match="already registered"):

        @register_reward("unit_test_length")
        def other(completion, example):
            return 0.0

    with pytest.raises(ValueError, match="':'"):
        register_reward("a:b")
    del REWARDS["unit_test_length"]


def test_get_reward_module_function():
    assert get_reward("r1lab.rewards.rule:format_reward") is format_reward


def test_get_reward_from_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        textwrap.dedent(
            """
            from dataclasses import dataclass

            @dataclass
            class Limits:  # a dataclass needs its module in sys.modules while it is defined
                most: int = 10

            def brevity(completion, example):
                return 1.0 if len(completion) <= Limits().most else 0.0

            NOT_A_FUNCTION = 3
            """
        )
    )
    brevity = get_reward(f"{path}:brevity")
    assert brevity("short", {}) == 1.0 and brevity("x" * 11, {}) == 0.0
    assert get_reward(f"{path}:brevity") is brevity  # loaded once
    with pytest.raises(AttributeError, match=r"my_rewards\.py:missing.*no attribute 'missing'.*brevity"):
        get_reward(f"{path}:missing")
    with pytest.raises(TypeError, match="NOT_A_FUNCTION.*not a function"):
        get_reward(f"{path}:NOT_A_FUNCTION")


@pytest.mark.parametrize(
    "spec, error, message",
    [
        ("acuracy", ValueError, r"unknown reward 'acuracy'; registered rewards: accuracy, .*format"),
        ("no_such_package_xyz.rewards:fn", ImportError, r"'no_such_package_xyz.rewards:fn'.*cannot import"),
        ("r1lab.rewards.rule:no_such_fn", AttributeError, r"no attribute 'no_such_fn'"),
        ("r1lab.rewards.rule:THINK_OPEN", TypeError, r"not a function"),
        ("missing/file.py:fn", FileNotFoundError, r"'missing/file.py:fn'.*not found"),
        ("module:", ValueError, r"'module:'"),
    ],
)
def test_get_reward_errors_name_the_spec(spec, error, message):
    with pytest.raises(error, match=message):
        get_reward(spec)


def test_get_reward_file_that_fails_to_run(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ImportError, match=r"broken\.py:fn.*RuntimeError: boom"):
        get_reward(f"{path}:fn")
    assert not any(name.startswith("r1lab_user_reward_broken") for name in sys.modules)  # a fixed file can load later


# ---------------------------------------------------------------- score_completions

COMPLETIONS = [
    "<think>x</think><answer>936</answer>",  # right, well-formed
    "<think>x</think><answer>935</answer>",  # wrong, well-formed
    "936",  # right value but untagged
]


def test_score_completions_weights_and_per_reward():
    result = score_completions(COMPLETIONS, [ADDITION] * 3, {"accuracy": 1.0, "format": 0.2})
    assert result.per_reward == {"accuracy": [1.0, 0.0, 0.0], "format": [1.0, 1.0, 0.0]}
    assert result.total == pytest.approx([1.2, 0.2, 0.0])
    assert result.errors == {"accuracy": 0, "format": 0}


def test_score_completions_none_counts_as_zero():
    examples = [ADDITION, {"prompt": "write a poem"}, ADDITION]
    result = score_completions(COMPLETIONS, examples, {"accuracy": 2.0, "format": 0.5})
    assert result.per_reward["accuracy"] == [1.0, None, 0.0]
    assert result.total == pytest.approx([2.5, 0.5, 0.0])


def test_score_completions_counts_failing_rewards_and_logs_once(tmp_path, caplog):
    path = tmp_path / "flaky.py"
    path.write_text(
        textwrap.dedent(
            """
            def fails_on_wrong(completion, example):
                if "935" in completion or completion == "936":
                    raise KeyError("no such thing")
                return 0.5

            def returns_junk(completion, example):
                return {"a": "a string", "b": float("nan"), "c": float("inf")}.get(completion[-1], 1)
            """
        )
    )
    spec = f"{path}:fails_on_wrong"
    with caplog.at_level(logging.WARNING, logger="r1lab"):
        result = score_completions(COMPLETIONS, [ADDITION] * 3, {"accuracy": 1.0, spec: 1.0})
        score_completions(COMPLETIONS, [ADDITION] * 3, {spec: 1.0})
    assert result.per_reward[spec] == [0.5, None, None]
    assert result.errors == {"accuracy": 0, spec: 2}
    assert result.total == pytest.approx([1.5, 0.0, 0.0])
    warnings = [record for record in caplog.records if spec in record.getMessage()]
    assert len(warnings) == 1  # the first failure only, even across calls
    assert "KeyError" in warnings[0].getMessage() and "no such thing" in warnings[0].getMessage()

    junk = f"{path}:returns_junk"
    result = score_completions(["a", "b", "c", "d"], [ADDITION] * 4, {junk: 1.0})
    assert result.per_reward[junk] == [None, None, None, 1.0]
    assert result.errors[junk] == 3
    assert result.total == [0.0, 0.0, 0.0, 1.0] and all(math.isfinite(t) for t in result.total)


def test_score_completions_loads_module_function(tmp_path, monkeypatch):
    (tmp_path / "unit_reward_module.py").write_text("def half(completion, example):\n    return 0.5\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    result = score_completions(["a", "b"], [{}, {}], {"unit_reward_module:half": 4.0})
    assert result.total == [2.0, 2.0]


def test_score_completions_rejects_mismatched_lengths_and_bad_specs():
    with pytest.raises(ValueError, match="2 completions but 1 examples"):
        score_completions(["a", "b"], [ADDITION], {"format": 1.0})
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        score_completions(["a"], [ADDITION], {"nope": 1.0})


# ---------------------------------------------------------------- rewards that end the process, Ctrl-C


def _exits(completion, example):
    sys.exit(3)


def _interrupts(completion, example):
    raise KeyboardInterrupt


def _signals_ctrl_c(completion, example):
    os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C arriving while the reward runs
    return 1.0


def test_a_reward_that_exits_is_a_failure_not_the_end_of_the_run(monkeypatch):
    monkeypatch.setitem(REWARDS, "test_exits", _exits)
    result = score_completions(["a", "b"], [ADDITION] * 2, {"test_exits": 1.0, "format": 1.0})
    assert result.errors == {"test_exits": 2, "format": 0} and result.scored == {"test_exits": 2, "format": 2}
    assert result.first_errors == {"test_exits": "SystemExit: 3 (the reward called sys.exit)"}
    assert result.per_reward["format"] == [0.0, 0.0]  # the other rewards were still scored


def test_a_reward_that_raises_keyboard_interrupt_by_itself_is_a_failure(monkeypatch):
    monkeypatch.setitem(REWARDS, "test_interrupts", _interrupts)
    result = score_completions(["a"], [ADDITION], {"test_interrupts": 1.0})
    assert result.errors == {"test_interrupts": 1}
    assert result.first_errors == {"test_interrupts": "KeyboardInterrupt"}
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back


def test_ctrl_c_while_a_reward_runs_stops_the_run(monkeypatch):
    monkeypatch.setitem(REWARDS, "test_ctrl_c", _signals_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        score_completions(["a", "b"], [ADDITION] * 2, {"test_ctrl_c": 1.0})
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_keyboard_interrupt_off_the_main_thread_is_taken_as_the_users(monkeypatch):
    monkeypatch.setitem(REWARDS, "test_interrupts", _interrupts)
    caught = []

    def score():
        try:
            score_completions(["a"], [ADDITION], {"test_interrupts": 1.0})
        except KeyboardInterrupt as error:
            caught.append(error)

    thread = threading.Thread(target=score)
    thread.start()
    thread.join()
    assert len(caught) == 1


def test_first_error_of_each_reward_in_the_batch(tmp_path):
    path = tmp_path / "some.py"
    path.write_text("def picky(completion, example):\n    if completion == 'ok':\n        return 1.0\n"
                    "    raise ValueError(f'cannot read {completion!r}')\n"
                    "def wordy(completion, example):\n    return 'yes'\n")
    picky, wordy = f"{path}:picky", f"{path}:wordy"
    result = score_completions(["ok", "x", "y"], [ADDITION] * 3, {picky: 1.0, wordy: 1.0})
    assert result.errors == {picky: 2, wordy: 3} and result.scored == {picky: 3, wordy: 3}
    assert result.first_errors == {picky: "ValueError: cannot read 'x'", wordy: "returned a str ('yes'), not a number"}
