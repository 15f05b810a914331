"""Rejection sampling, readability filters, domain and cold-start data, the rejection_sampling stage, and
reward models as rewards ("reward_model:<folder>")."""

import json
from types import SimpleNamespace

import pytest
import yaml

from r1lab.data.cold_start import cold_start_from_outputs, few_shot_long_cot, rewrite_with_summary
from r1lab.data.domain import domain_examples
from r1lab.rewards import format_reward
from r1lab.data.filters import deduplicate, has_code_block, has_overlong_paragraph, is_mixed_language
from r1lab.data.rejection import ReadabilityFilters, readability_problem, rejection_sample
from r1lab.engine import SamplingParams
from r1lab.rewards.rule import extract_answer
from r1lab.tasks import verify
from r1lab.tasks.arithmetic import ArithmeticTask
from r1lab.templates import PromptTemplate, TemplateConfig


class ScriptedEngine:
    """Returns hand-written completions: ``scripts[prompt]`` is the list of n completions for that prompt."""

    def __init__(self, scripts):
        self.scripts, self.rendered = scripts, []

    def generate(self, prompts, n, params):
        self.rendered += prompts
        return [[SimpleNamespace(text=text) for text in self.scripts[p.split("User: ")[-1].split(".")[0]][:n]]
                for p in prompts]


GOOD = "<think>sum 1+2=3 so 3</think><answer>3</answer>"
MIXED = "<think>suma 1+2=3 asi 3</think><answer>3</answer>"
LONG = "<think>sum " + "1+2=3 " * 12 + "so 3</think><answer>3</answer>"
CODE = "<think>sum ```1+2``` so 3</think><answer>3</answer>"
WRONG = "<think>sum 1+2=4 so 4</think><answer>4</answer>"


@pytest.mark.parametrize("completion, expected", [
    (GOOD, None), (MIXED, "mixed_language"), (LONG, "overlong_paragraph"), (CODE, "code_block"),
    ("<think>sum 1\n\n1 1 1 1 1 1 1 1\n\nso</think>", None),  # blank lines split paragraphs: each is short
    ("<answer>3</answer>", None),  # no chain of thought: nothing to call mixed
])
def test_readability_filters_table(completion, expected):
    assert readability_problem(completion, ReadabilityFilters(max_paragraph_words=10)) == expected


def test_filter_predicates():
    assert is_mixed_language(MIXED) and not is_mixed_language(MIXED, language="es")
    assert not is_mixed_language(MIXED, min_share=0.0)
    assert has_overlong_paragraph("a b c", 2) and not has_overlong_paragraph("a b\n\nc d", 2)
    assert has_code_block("x ```py\n``` y") and not has_code_block("`inline`")
    rows = [{"prompt": "1+2", "completion": "A  b"}, {"prompt": "1+2", "completion": "a b"},
            {"prompt": "2+1", "completion": "a b"}]
    assert deduplicate(rows) == ([rows[0], rows[2]], 1)


def test_rejection_sample_keeps_correct_readable_distinct_rows_with_provenance():
    task = ArithmeticTask(digits=1)
    examples = [task.make_example(1, "+", 2), task.make_example(2, "+", 2)]
    four = "<think>sum 2+2=4 so 4</think><answer>4</answer>"
    engine = ScriptedEngine({"1+2": [GOOD, MIXED, LONG, CODE, WRONG, " " + GOOD.upper().replace("THINK", "think")
                                     .replace("ANSWER", "answer")],
                             "2+2": [four, "<think>sum 2+2=5 so 5</think><answer>5</answer>", four,
                                     "<think>so</think><answer>5</answer>", four, four]})
    template = PromptTemplate(TemplateConfig())
    params = SamplingParams(temperature=0.7)
    rows, stats = rejection_sample(engine, task, template, examples, 6, params,
                                   filters=ReadabilityFilters(max_paragraph_words=10),
                                   provenance={"checkpoint": "ckpt", "stage": "rl"})
    assert [(r["prompt"], r["completion"]) for r in rows] == [("1+2", GOOD), ("2+2", four)]
    assert rows[0]["answer"] == "3"
    assert rows[0]["source"] == {"checkpoint": "ckpt", "stage": "rl", "sample_index": 0, "temperature": 0.7}
    assert stats["dropped"] == {"mixed_language": 1, "overlong_paragraph": 1, "code_block": 1, "duplicate": 4}
    assert stats["sampled"] == 12 and stats["correct"] == 9 and stats["incorrect"] == 3 and stats["kept"] == 2
    assert stats["correct"] == stats["kept"] + sum(stats["dropped"].values())


def test_a_judge_replaces_the_rule_verifier():
    engine = ScriptedEngine({"hi": ["<think>so</think><answer>hello</answer>",
                                    "<think>so</think><answer>go</answer>"]})
    template = PromptTemplate(TemplateConfig())
    rows, stats = rejection_sample(engine, None, template, [{"prompt": "hi"}], 2, SamplingParams(),
                                   judge=lambda prompt, completion, example: "hello" in completion)
    assert [r["completion"] for r in rows] == ["<think>so</think><answer>hello</answer>"] and stats["correct"] == 1


def test_domain_examples_are_in_the_r1_format_and_right():
    rows = domain_examples(30, seed=1)
    assert {r["source"]["kind"] for r in rows} == {"uppercase", "reverse_words", "count_letters"}
    assert domain_examples(30, seed=1) == rows
    for row in rows:
        assert row["completion"].startswith("<think>") and extract_answer(row["completion"]) == row["answer"]
        text = row["prompt"].split(": ", 1)[1]
        expected = {"uppercase": text.upper(), "reverse_words": " ".join(text.split()[::-1]),
                    "count_letters": str(len(text.replace(" ", "")))}[row["source"]["kind"]]
        assert row["answer"] == expected
    with pytest.raises(ValueError, match="unknown domain kind"):
        domain_examples(1, kinds=("poetry",))


def test_cold_start_rewrites_as_reasoning_then_summary():
    assert rewrite_with_summary(" <think> sum 1+2=3 so 3 </think><answer>3</answer>") == (
        "<think>sum 1+2=3 so 3 In short, the answer is 3.</think><answer>3</answer>")
    assert rewrite_with_summary("<answer>3</answer>") is None
    rows = cold_start_from_outputs([{"prompt": "1+2", "completion": GOOD, "answer": "3", "source": {"stage": "zero"}},
                                    {"prompt": "1+1", "completion": "no tags", "answer": "2"}])
    assert len(rows) == 1 and rows[0]["source"] == {"stage": "zero", "rewritten": "reasoning_then_summary"}
    assert verify(extract_answer(rows[0]["completion"]), {"answer": "3", "verifier": "integer"})
    assert format_reward(rows[0]["completion"], {}) == 1.0  # the summary keeps the format RL rewards later


def test_few_shot_long_cot_puts_k_worked_examples_before_the_question():
    task = ArithmeticTask(digits=1)
    examples = [task.make_example(1, "+", 2)]
    engine = ScriptedEngine({"1+2": [GOOD, WRONG]})
    template = PromptTemplate(TemplateConfig())
    rows, stats = few_shot_long_cot(engine, task, template, examples, 2, SamplingParams(), k=2)
    prompt = engine.rendered[0]
    lines = prompt.split("\n")
    assert len(lines) == 3 and all(line.endswith("</answer>") and "<think>sum " in line for line in lines[:2])
    assert lines[2] == template.render("1+2")
    assert [r["completion"] for r in rows] == [GOOD] and rows[0]["source"]["few_shot"] == 2


def test_few_shot_long_cot_with_a_tiny_model(tiny_checkpoint):
    from r1lab.generation import Generator
    from r1lab.models import load_model

    model, tokenizer = load_model(str(tiny_checkpoint))
    task = ArithmeticTask(digits=1)
    rows, stats = few_shot_long_cot(Generator("transformers", model, tokenizer), task,
                                    PromptTemplate(TemplateConfig(), tokenizer), task.examples("train", 2), 2,
                                    SamplingParams(max_new_tokens=8), k=1)
    assert stats["sampled"] == 4 and stats["kept"] == len(rows) <= stats["correct"]


def test_rejection_sampling_stage_writes_data_for_a_later_sft_stage(tmp_path, tiny_checkpoint):
    from r1lab.pipeline import run_recipe

    stages = {"rs": {"kind": "rejection_sampling", "num_prompts": 2, "samples_per_prompt": 2, "max_new_tokens": 8,
                     "add_domain_examples": 3, "filters": {"max_paragraph_words": 50}},
              "sft": {"kind": "sft", "init": str(tiny_checkpoint), "data": "rs", "max_steps": 1, "batch_size": 2,
                      "max_length": 128, "micro_batch_tokens": 256, "eval_fraction": 0.0, "eval": False}}
    path = tmp_path / "rs.yaml"
    path.write_text(yaml.safe_dump({"name": "rs", "output_dir": str(tmp_path / "runs"), "model": str(tiny_checkpoint),
                                    "task": {"name": "arithmetic", "options": {"digits": 1}}, "stages": stages}))
    run_dir = run_recipe(path, quiet=True)
    data, stats = run_dir / "rs" / "data.jsonl", json.loads((run_dir / "rs" / "stats.json").read_text())
    done = json.loads((run_dir / "rs" / "done.json").read_text())
    assert done["data_file"] == str(data) and done["model"] is None and done["eval"] is None
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert stats["sampled"] == 4 and stats["domain_examples"] == 3 and stats["rows"] == len(rows) == stats["kept"] + 3
    assert all(row["source"]["stage"] == "rs" for row in rows[:stats["kept"]])
    assert (run_dir / "sft" / "done.json").is_file()


def test_reward_model_spec_gives_a_cached_reward(tmp_path, tiny_checkpoint):
    from r1lab.models import load_tokenizer
    from r1lab.rewards import get_reward
    from r1lab.rewards.reward_model import load_reward_model, save_reward_model
    from r1lab.value_model import init_value_model

    save_reward_model(init_value_model(str(tiny_checkpoint)), load_tokenizer(str(tiny_checkpoint)), TemplateConfig(),
                      tmp_path / "rm")
    reward = get_reward(f"reward_model:{tmp_path / 'rm'}")
    assert get_reward(f"reward_model:{tmp_path}/./rm") is reward  # one loaded model per folder
    expected = load_reward_model(tmp_path / "rm").score(["1+2"], [GOOD])[0]
    assert reward(GOOD, {"prompt": "1+2"}) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs a folder"):
        get_reward("reward_model:")
