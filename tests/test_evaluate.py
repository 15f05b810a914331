"""Metric functions checked against numbers worked out by hand."""

from math import comb

import pytest

from r1lab.evaluate import (
    cons_at_k,
    majority_vote,
    mean_pass_at_k,
    normalize_answer,
    pass_at_1,
    pass_at_k,
    reference_fields,
    summarize_samples,
)


def test_pass_at_1_averages_per_problem_first():
    # Problem A: 1 of 4 correct, problem B: 2 of 2 correct -> (0.25 + 1.0) / 2.
    assert pass_at_1([[True, False, False, False], [True, True]]) == pytest.approx(0.625)


def test_pass_at_1_rejects_empty_input():
    with pytest.raises(ValueError):
        pass_at_1([])
    with pytest.raises(ValueError):
        pass_at_1([[True], []])


def test_pass_at_k_hand_computed():
    # 1 - C(3,2)/C(5,2) = 1 - 3/10.
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # k=1 is just c/n
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(5, 4, 2) == 1.0  # only one wrong sample, any pair holds a correct one
    assert pass_at_k(4, 4, 4) == 1.0


@pytest.mark.parametrize("n,c,k", [(10, 3, 4), (20, 7, 5), (64, 1, 16), (16, 15, 1)])
def test_pass_at_k_matches_binomial_formula(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))


def test_pass_at_k_is_stable_for_large_n():
    value = pass_at_k(10_000, 37, 100)
    assert 0.0 < value < 1.0
    assert value == pytest.approx(1 - comb(10_000 - 37, 100) / comb(10_000, 100))


@pytest.mark.parametrize("n,c,k", [(3, 1, 4), (3, 4, 2), (3, 1, 0), (3, -1, 1)])
def test_pass_at_k_rejects_impossible_arguments(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


def test_mean_pass_at_k():
    correct = [[True, True, False, False, False], [False] * 5]
    # (0.7 + 0.0) / 2
    assert mean_pass_at_k(correct, 2) == pytest.approx(0.35)
    assert mean_pass_at_k(correct, 1) == pytest.approx(pass_at_1(correct))
    with pytest.raises(ValueError):
        mean_pass_at_k(correct, 6)


def test_majority_vote_counts_normalised_answers():
    assert majority_vote([" 42", "7", "42 ", None, None, None]) == "42"


def test_majority_vote_tie_goes_to_first_seen():
    assert majority_vote(["7", "42", "42", "7"]) == "7"
    assert majority_vote(["b", "a"]) == "b"


def test_majority_vote_all_missing():
    assert majority_vote([None, None]) is None
    assert majority_vote([]) is None
    assert majority_vote(["  ", None]) is None  # blank answers count as missing


def test_normalize_answer():
    assert normalize_answer("  x \n") == "x"
    assert normalize_answer("") is None
    assert normalize_answer(None) is None


def test_cons_at_k():
    answers = [
        ["4", "4", "5", None],  # majority "4", graded correct -> solved
        ["1", "2", "2", "3"],  # majority "2", wrong although "3" is right -> not solved
        [None, None, None, None],  # no answer -> not solved
        ["x", "y", "y", "x"],  # tie -> "x" (first seen), correct -> solved
    ]
    correct = [
        [True, True, False, False],
        [False, False, False, True],
        [False, False, False, False],
        [True, False, False, True],
    ]
    assert cons_at_k(answers, correct) == pytest.approx(0.5)


def test_cons_at_k_uses_grade_of_a_sample_with_the_majority_answer():
    # The grader accepted one " 4" but not the other (e.g. a format failure); one suffices.
    assert cons_at_k([["4 ", " 4", "5"]], [[False, True, False]]) == 1.0


def test_cons_at_k_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        cons_at_k([["1"]], [[True], [False]])
    with pytest.raises(ValueError):
        cons_at_k([["1", "2"]], [[True]])


def _record(problem, answer, correct, fmt=True, length=100, truncated=False):
    return {"problem": problem, "answer": answer, "correct": correct,
            "format": fmt, "length": length, "truncated": truncated}


def test_summarize_samples_hand_computed():
    records = [
        _record(0, "4", True, length=100),
        _record(1, "2", False, fmt=False, length=300, truncated=True),
        _record(0, "4", True, length=120),
        _record(1, "3", True, length=80),
        _record(0, "5", False, length=90),
        _record(1, "2", False, length=110),
    ]
    summary = summarize_samples(records)
    assert summary == {
        "pass@1": round((2 / 3 + 1 / 3) / 2, 4),  # 0.5
        "cons@k": 0.5,  # problem 0 majority "4" correct, problem 1 majority "2" wrong
        "k": 3,
        "num_problems": 2,
        "format_rate": round(5 / 6, 4),
        "length_mean": round(800 / 6, 4),
        "truncated_rate": round(1 / 6, 4),
        "language_consistency": None,  # no record has words that count
        "language_mixed_rate": None,
    }
    assert summary["format_rate"] == 0.8333
    assert summary["length_mean"] == 133.3333


def test_summarize_samples_language_mix():
    records = [{**_record(0, "1", True), "language": share} for share in (1.0, 0.5, None, 0.75)]
    summary = summarize_samples(records)
    assert summary["language_consistency"] == round((1.0 + 0.5 + 0.75) / 3, 4)  # None (no counted word) left out
    assert summary["language_mixed_rate"] == round(2 / 3, 4)


def test_summarize_samples_string_problem_ids():
    summary = summarize_samples([_record("a", "1", True), _record("b", None, False)])
    assert summary["k"] == 1
    assert summary["num_problems"] == 2
    assert summary["pass@1"] == 0.5
    assert summary["cons@k"] == 0.5


def test_summarize_samples_rejects_uneven_k_and_empty():
    with pytest.raises(ValueError, match="different numbers of samples"):
        summarize_samples([_record(0, "1", True), _record(0, "1", True), _record(1, "1", True)])
    with pytest.raises(ValueError):
        summarize_samples([])


def test_reference_fields_never_invent_a_reference():
    assert reference_fields({"answer": "936", "verifier": "integer"}) == {"reference": "936"}
    assert reference_fields({"answer": "", "verifier": "code"}) == {"reference": ""}  # empty is still a reference
    assert reference_fields({"answer": None, "verifier": "reasoning_gym"}) == {
        "reference": None, "reference_note": "no single reference answer: scored by reasoning-gym's own scorer"}
    assert reference_fields({"verifier": "code"}) == {
        "reference": None, "reference_note": "no single reference answer: scored by the 'code' verifier"}


def test_an_evaluation_tells_its_progress_from_zero_to_every_sample(tiny_checkpoint):
    from r1lab.evaluate import evaluate_model
    from r1lab.generation import Generator
    from r1lab.models import load_model
    from r1lab.tasks import get_task
    from r1lab.templates import PromptTemplate, TemplateConfig

    model, tokenizer = load_model(str(tiny_checkpoint))
    told = []
    result = evaluate_model(Generator("auto", model, tokenizer), get_task("arithmetic", digits=1),
                            PromptTemplate(TemplateConfig(), tokenizer), num_problems=6, k=3, temperature=0.6,
                            top_p=0.95, max_new_tokens=8, seed=1, progress=lambda done, total: told.append(
                                (done, total)))
    assert told[0] == (0, 18) and told[-1] == (18, 18)
    assert [done for done, _ in told] == sorted(done for done, _ in told)
    assert result["num_problems"] == 6
