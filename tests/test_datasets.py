"""Real-data tasks: JSONL / CSV / parquet files and hub ids with a column mapping, reasoning-gym, pass-rate filter."""

import json
import sys
import types

import pytest

from r1lab.data.filters import filter_by_pass_rate, write_jsonl
from r1lab.engine import Generation
from r1lab.evaluate import evaluate_model
from r1lab.rewards import accuracy_reward
from r1lab.tasks import get_task, verify
from r1lab.templates import PromptTemplate, TemplateConfig

ROWS = [{"question": f"What is {a} + {a}?", "solution": f"Double it. #### {2 * a}", "level": a % 3}
        for a in range(1, 41)]


def write_table(tmp_path, suffix):
    path = tmp_path / f"rows{suffix}"
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    else:
        pandas = pytest.importorskip("pandas")
        frame = pandas.DataFrame(ROWS)
        frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_file_with_column_mapping_and_answer_regex(tmp_path, suffix):
    if suffix != ".jsonl":
        pytest.importorskip("datasets")
    path = write_table(tmp_path, suffix)
    task = get_task("dataset", path=str(path), prompt_field="question", answer_field="solution",
                    answer_regex=r"####\s*(.+)", fields={"difficulty": "level"}, verifier="math", test_fraction=0.25)
    train, test = task.examples("train", 0), task.examples("test", 0)
    assert len(train) + len(test) == len(ROWS) and train and test
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}  # split by prompt hash: disjoint
    example = next(e for e in train + test if e["prompt"] == "What is 7 + 7?")
    assert example["answer"] == "14" and example["difficulty"] == 1 and example["verifier"] == "math"
    assert verify("14.0", example) and not verify("15", example)
    assert len(task.examples("train", 5, seed=1)) == 5


def test_separate_test_file_and_max_rows(tmp_path):
    path = write_table(tmp_path, ".jsonl")
    task = get_task("dataset", path=str(path), test_path=str(path), prompt_field="question",
                    answer_field="solution", answer_regex=r"####\s*(.+)", max_rows=10)
    assert len(task.examples("train", 0)) == 10 and len(task.examples("test", 0)) == 10


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_missing_column_names_the_file_and_the_column(tmp_path, suffix):
    if suffix == ".csv":
        pytest.importorskip("datasets")
    path = write_table(tmp_path, suffix)
    with pytest.raises(ValueError) as error:
        get_task("dataset", path=str(path), prompt_field="problem")
    assert str(path) in str(error.value) and "'problem'" in str(error.value) and "question" in str(error.value)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.csv"):
        get_task("dataset", path=str(tmp_path / "missing.csv"))
    odd = tmp_path / "rows.txt"
    odd.write_text("x")
    with pytest.raises(ValueError, match="unknown file type"):
        get_task("dataset", path=str(odd))
    path = write_table(tmp_path, ".jsonl")
    # a wrong column mapping: the whole solution is not an integer answer, nor a letter
    with pytest.raises(ValueError, match=r"row 1: the reference answer .* does not pass its own 'integer'"):
        get_task("dataset", path=str(path), prompt_field="question", answer_field="solution", verifier="integer")
    with pytest.raises(ValueError, match=r"row 1: the 'multiple_choice' verifier cannot check this row"):
        get_task("dataset", path=str(path), prompt_field="question", answer_field="solution",
                 verifier="multiple_choice")
    with pytest.raises(ValueError, match="answer_regex"):
        get_task("dataset", path=str(path), prompt_field="question", answer_field="solution", answer_regex="@@(.*)")
    with pytest.raises(ValueError, match="unknown verifier"):
        get_task("dataset", path=str(path), verifier="nope")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"hub:no-such-org/no-such-dataset\[train\].*cannot load"):
        get_task("dataset", path="no-such-org/no-such-dataset")


def test_code_rows_keep_their_tests(tmp_path):
    path = tmp_path / "code.jsonl"
    row = {"prompt": "Write add(a, b).", "tests": ["assert add(2, 3) == 5"]}
    path.write_text(json.dumps(row) + "\n")
    task = get_task("dataset", path=str(path), test_path=str(path), verifier="code")
    example = task.examples("train", 0)[0]
    assert example["answer"] == "" and example["tests"] == row["tests"]
    assert verify("def add(a, b):\n    return a + b", example)


# --- reasoning-gym ---


def test_reasoning_gym_real_task():
    pytest.importorskip("reasoning_gym")
    task = get_task("reasoning_gym", name="basic_arithmetic", options={"max_terms": 3, "max_digits": 2}, test_size=10)
    test = task.examples("test", 0)
    train = task.examples("train", 30, seed=3)
    assert len(test) == 10 and len(train) == 30
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    example = train[0]
    assert verify(example["answer"], example) and not verify("not a number", example)
    with pytest.raises(ValueError, match="no_such_dataset"):
        get_task("reasoning_gym", name="no_such_dataset")


class FakeDataset:
    """Enough of reasoning_gym's ProceduralDataset: indexable entries and score_answer."""

    def __init__(self, size, seed, offset=0):
        self.items = [{"question": f"{seed % 97 + i} doubled?", "answer": str(2 * (seed % 97 + i)),
                       "metadata": {"i": i}} for i in range(size)]

    def __getitem__(self, i):
        return self.items[i]

    def score_answer(self, answer, entry):
        return 1.0 if answer == entry["answer"] else 0.01


def test_reasoning_gym_adapter_with_a_fake_module(monkeypatch):
    fake = types.ModuleType("reasoning_gym")
    fake.create_dataset = lambda name, size, seed, **options: FakeDataset(size, seed + options.get("offset", 0))
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
    monkeypatch.setattr("r1lab.tasks.datasets._SCORERS", {})
    task = get_task("reasoning_gym", name="doubling", options={"offset": 5}, test_size=4)
    test, train = task.examples("test", 0), task.examples("train", 8)
    assert len(test) == 4 and len(train) == 8
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in test}
    assert verify(train[0]["answer"], train[0]) and not verify("1", train[0])  # partial credit 0.01 is wrong


def test_reasoning_gym_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # import fails as if not installed
    monkeypatch.setattr("r1lab.tasks.datasets._SCORERS", {})
    with pytest.raises(ImportError, match=r"r1lab\[gym\]"):
        get_task("reasoning_gym", name="basic_arithmetic")


# --- pass-rate filter ---


class ScriptedEngine:
    """Answers prompt i correctly in a scripted share of its k samples."""

    def __init__(self, correct_share: dict[str, float]):
        self.correct_share = correct_share

    def generate(self, prompts, n, params):
        groups = []
        for prompt in prompts:
            right = round(self.correct_share[prompt] * n)
            answer = prompt.split()[-1]  # the scripted prompts end with their answer
            texts = [f"<think>x</think><answer>{answer if j < right else 'wrong'}</answer>" for j in range(n)]
            groups.append([Generation([1], [2], text, False) for text in texts])
        return groups


def test_pass_rate_filter_keeps_prompts_strictly_between_the_bounds(tmp_path):
    shares = {"always 1": 1.0, "never 2": 0.0, "half 3": 0.5, "rarely 4": 0.1, "often 5": 0.75, "mostly 6": 0.9}
    examples = [{"prompt": p, "answer": p.split()[-1], "verifier": "exact"} for p in shares]
    template = PromptTemplate(TemplateConfig(kind="plain"))
    kept, stats = filter_by_pass_rate(ScriptedEngine(shares), None, template, examples, k=20, low=0.1, high=0.9)
    assert [e["prompt"] for e in kept] == ["half 3", "often 5"]  # 0.1 and 0.9 themselves are out (strict)
    assert kept[0]["pass_rate"] == 0.5
    assert stats["prompts"] == 6 and stats["kept"] == 2 and stats["too_easy"] == 2 and stats["too_hard"] == 2
    path = write_jsonl(kept, tmp_path / "kept.jsonl")
    assert len(get_task("dataset", path=str(path), test_path=str(path)).examples("train", 0)) == 2
    with pytest.raises(ValueError, match="low < high"):
        filter_by_pass_rate(ScriptedEngine(shares), None, template, examples, low=0.9, high=0.1)


def test_pass_rate_filter_with_a_real_engine_draws_from_the_task():
    from r1lab.generation import Generator
    from r1lab.models import build_tiny_model, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    task = get_task("arithmetic", digits=1)
    kept, stats = filter_by_pass_rate(Generator("transformers", model, tokenizer), task,
                                      PromptTemplate(TemplateConfig(), tokenizer), k=2, max_prompts=3,
                                      max_new_tokens=4)
    assert stats["prompts"] == 3 and stats["too_hard"] == 3 and kept == []  # a random model solves nothing


class FakeLogicDataset:
    """A reasoning-gym dataset whose problems have many right answers and no reference (like propositional_logic)."""

    def __init__(self, size, seed):
        self.items = [{"question": f"Give a formula true when P{seed % 97 + i} holds", "answer": None,
                       "metadata": {"atom": f"P{seed % 97 + i}"}} for i in range(size)]

    def __getitem__(self, i):
        return self.items[i]

    def score_answer(self, answer, entry):
        return 1.0 if answer is not None and entry["metadata"]["atom"] in answer else 0.0


class ScriptedAnswers:
    """A generator that answers every prompt with one fixed response."""

    def __init__(self, response):
        self.response = response

    def generate(self, prompts, n, params):
        return [[Generation([1], [2], self.response, False) for _ in range(n)] for _ in prompts]


@pytest.fixture
def fake_logic_gym(monkeypatch):
    fake = types.ModuleType("reasoning_gym")
    fake.create_dataset = lambda name, size, seed, **options: FakeLogicDataset(size, seed)
    monkeypatch.setitem(sys.modules, "reasoning_gym", fake)
    monkeypatch.setattr("r1lab.tasks.datasets._SCORERS", {})


def test_reasoning_gym_problem_without_a_reference_keeps_none_and_is_scored_by_the_gym(fake_logic_gym):
    task = get_task("reasoning_gym", name="propositional_logic", test_size=2)
    example = task.examples("train", 1)[0]
    assert example["answer"] is None  # not the text "None"
    atom = example["rg_entry"]["metadata"]["atom"]
    assert accuracy_reward(f"<think>x</think><answer>{atom} or Q</answer>", example) == 1.0
    assert accuracy_reward("<think>x</think><answer>Q</answer>", example) == 0.0
    assert accuracy_reward("<think>x</think><answer>None</answer>", example) == 0.0


def test_evaluation_samples_say_a_problem_has_no_reference(fake_logic_gym, tmp_path):
    task = get_task("reasoning_gym", name="propositional_logic", test_size=2)
    atom = task.examples("test", 0)[0]["rg_entry"]["metadata"]["atom"]
    samples = tmp_path / "samples.jsonl"
    evaluate_model(ScriptedAnswers(f"<think>x</think><answer>{atom}</answer>"), task,
                   PromptTemplate(TemplateConfig(kind="plain")), num_problems=2, k=1, temperature=0.6, top_p=0.95,
                   max_new_tokens=8, seed=0, samples_path=samples)
    lines = [json.loads(line) for line in samples.read_text().splitlines()]
    assert [line["reference"] for line in lines] == [None, None]
    assert lines[0]["reference_note"] == "no single reference answer: scored by reasoning-gym's own scorer"
    assert [line["correct"] for line in lines] == [True, False]  # the scorer judged the first problem's atom


def test_answer_format_is_a_task_option_stamped_on_every_example(tmp_path, fake_logic_gym):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+1", "answer": "2"}\n{"prompt": "2+2", "answer": "4", "answer_format": "tags"}\n')
    rows = get_task("dataset", path=str(path), test_path=str(path)).examples("train", 0)
    assert [row["answer_format"] for row in rows] == ["tags_or_boxed", "tags"]  # a row may set its own
    boxed = "<think>x</think> \\boxed{2}"
    assert accuracy_reward(boxed, rows[0]) == 1.0
    tags_only = get_task("dataset", path=str(path), test_path=str(path), answer_format="tags")
    assert accuracy_reward(boxed, tags_only.examples("train", 0)[0]) == 0.0
    gym = get_task("reasoning_gym", name="propositional_logic", test_size=1, answer_format="tags")
    assert gym.examples("test", 0)[0]["answer_format"] == "tags"
    with pytest.raises(ValueError, match="unknown answer_format 'box'; choose one of tags_or_boxed, tags"):
        get_task("dataset", path=str(path), answer_format="box")
    path.write_text('{"prompt": "1+1", "answer": "2", "answer_format": "latex"}\n')
    with pytest.raises(ValueError, match="row 1: unknown answer_format 'latex'"):
        get_task("dataset", path=str(path), test_path=str(path))
