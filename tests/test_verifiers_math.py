"""Table tests of the answer verifiers for real data: math (math-verify), multiple choice, exact.

Each table has correct answers, equivalent answers written differently, wrong answers and malformed answers.
The code verifier's table is in test_sandbox.py, reasoning-gym's in test_datasets.py.
"""

import pytest

from r1lab.rewards import accuracy_reward
from r1lab.tasks import VERIFIERS, get_task, verify
from r1lab.tasks.verifiers_math import choice_letter

pytest.importorskip("math_verify")

MATH_TABLE = [
    # (reference, answer, expected)
    ("\\frac{1}{2}", "\\frac{1}{2}", True),  # correct
    ("42", "42", True),
    ("\\frac{1}{2}", "0.5", True),  # equivalent, written differently
    ("\\frac{1}{2}", "1/2", True),
    ("\\frac{1}{2}", "\\dfrac{1}{2}", True),
    ("\\frac{1}{2}", "\\boxed{\\frac12}", True),
    ("\\frac{1}{2}", "The answer is $\\frac{2}{4}$.", True),
    ("\\{1,2\\}", "\\{2, 1\\}", True),  # sets: order does not matter
    ("1,2", "2, 1", True),
    ("(0,1]", "(0, 1]", True),  # intervals
    ("3", "x = 3", True),
    ("1000", "1,000", True),
    ("\\sqrt{8}", "2\\sqrt{2}", True),
    ("2\\pi", "2 \\pi", True),
    ("x^2+2x+1", "(x+1)^2", True),
    ("\\frac{1}{2}", "0.25", False),  # wrong
    ("(0,1]", "[0,1]", False),  # an interval with the wrong bracket
    ("\\{1,2\\}", "\\{1, 3\\}", False),
    ("42", "43", False),
    ("5", "I think 4 or 5", False),  # two answers are not an answer
    ("\\frac{1}{2}", "", False),  # malformed
    ("\\frac{1}{2}", "\\frac{1}{2", False),
    ("3", "banana", False),
    ("5", "}{", False),
]


@pytest.mark.parametrize("reference,answer,expected", MATH_TABLE)
def test_math_verifier_table(reference, answer, expected):
    assert verify(answer, {"answer": reference, "verifier": "math"}) is expected


def test_math_reference_that_cannot_be_read_is_an_error():
    with pytest.raises(ValueError, match="reference"):
        verify("1", {"answer": "", "verifier": "math"})


def test_math_accuracy_reward_reads_the_answer_tags():
    example = {"prompt": "1/2 + 1/4?", "answer": "\\frac{3}{4}", "verifier": "math"}
    assert accuracy_reward("<think>…</think><answer>\\boxed{0.75}</answer>", example) == 1.0
    assert accuracy_reward("<think>…</think><answer>3/4</answer>", example) == 1.0
    assert accuracy_reward("<think>…</think><answer>1/2</answer>", example) == 0.0
    assert accuracy_reward("the answer is 3/4", example) == 0.0  # no answer tags: no answer


MC_TABLE = [
    # (reference, answer, expected)
    ("B", "B", True),  # correct
    ("B", "(B)", True),  # equivalent, written differently
    ("B", "b", True),
    ("B", "B) 42", True),
    ("B", "B.", True),
    ("B", "**B**", True),
    ("B", "\\boxed{B}", True),
    ("B", "The answer is B", True),
    ("B", "Answer: (b)", True),
    ("(B)", "B", True),  # the reference may carry brackets too
    ("B", "Paris", True),  # the text of choice B
    ("B", "C", False),  # wrong
    ("B", "The answer is (C).", False),
    ("B", "London", False),
    ("B", "A or B", False),  # two letters are not an answer
    ("B", "answer is B. option C is wrong", False),
    ("B", "", False),  # malformed
    ("B", "the answer is a prime", False),  # a lower-case word is not a letter
    ("B", "K", False),
    ("B", "I think so", False),
]


@pytest.mark.parametrize("reference,answer,expected", MC_TABLE)
def test_multiple_choice_verifier_table(reference, answer, expected):
    example = {"answer": reference, "verifier": "multiple_choice", "choices": ["London", "Paris", "Rome"]}
    assert verify(answer, example) is expected


def test_multiple_choice_reference_must_be_a_letter():
    with pytest.raises(ValueError, match="not a letter"):
        verify("B", {"answer": "Paris", "verifier": "multiple_choice"})
    assert choice_letter("[D]") == "D" and choice_letter("C: 12") == "C"


EXACT_TABLE = [
    ("Paris", "Paris", True),  # correct
    ("Paris", "  Paris\n", True),  # the same once surrounding whitespace is stripped
    ("Paris", "paris", False),  # exact means exact: case counts
    ("Paris", "Lyon", False),  # wrong
    ("Paris", "", False),  # malformed
]


@pytest.mark.parametrize("reference,answer,expected", EXACT_TABLE)
def test_exact_verifier_table(reference, answer, expected):
    assert verify(answer, {"answer": reference, "verifier": "exact"}) is expected


def test_new_verifiers_are_registered_and_usable_from_a_jsonl_task(tmp_path):
    assert {"math", "multiple_choice", "code", "reasoning_gym", "exact"} <= set(VERIFIERS)
    data = tmp_path / "math.jsonl"
    data.write_text('{"prompt": "half of one?", "answer": "\\\\frac{1}{2}"}\n{"prompt": "2+2?", "answer": "4"}\n')
    task = get_task("jsonl", train_path=str(data), test_path=str(data), verifier="math")
    example = task.examples("train", 0)[0]
    assert verify("0.5", example) and not verify("2", example)
