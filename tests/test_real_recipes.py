"""Every real-model recipe runs two GRPO steps end to end on CPU, on a tiny random model of its architecture built
on the spot (no download) and the shipped data/math_sample.jsonl; and `r1lab eval` reports unbiased pass@k."""

import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from test_models import make_real_architecture  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
REAL_RECIPES = sorted(p for p in (ROOT / "recipes").glob("*/*.yaml") if p.parent.name != "tiny")

# A ChatML-style template (Qwen's layout) for tokenizers of instruct recipes.
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model_for(recipe: dict, tmp_path: Path) -> tuple[Path, str]:
    arch = "llama" if "llama" in recipe["model"].lower() else "qwen2"
    path = make_real_architecture(tmp_path, arch)
    if recipe.get("template", {}).get("kind") == "chat":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(path)
    return path, arch


# Settings that make any stage take seconds; each stage gets those its kind has.
SMOKE = {"steps": 2, "max_steps": 2, "num_prompts": 2, "samples_per_prompt": 2, "add_domain_examples": 4,
         "domain_pairs": 4, "prompts_per_step": 2, "group_size": 2, "batch_size": 2, "max_new_tokens": 8,
         "minibatches": 2, "micro_batch_size": 1, "warmup_steps": 1, "eval_every": 1, "save_every": 1}


def smoke_overrides(recipe: dict, model: Path, tmp_path: Path) -> list[str]:
    from r1lab.pipeline import STAGE_KINDS

    out = [f"model={model}", "dtype=float32", "device=cpu", "threads=1", f"output_dir={tmp_path / 'runs'}",
           "name=smoke", "eval.num_problems=2", "eval.k=2", "eval.max_new_tokens=8", "eval.quick_problems=2",
           "eval.quick_k=1"]
    for name, stage in recipe["stages"].items():
        if stage.get("init") not in (None, "", "model", *recipe["stages"]):  # a teacher or other outside model
            out.append(f"stages.{name}.init={model}")
        fields = {f.name for f in dataclasses.fields(STAGE_KINDS[stage["kind"]])}
        out += [f"stages.{name}.{key}={value}" for key, value in SMOKE.items() if key in fields]
    return out


def test_there_are_real_recipes():
    names = {f"{p.parent.name}/{p.name}" for p in REAL_RECIPES}
    assert {"qwen2.5-0.5b/r1_zero.yaml", "qwen2.5-1.5b/r1_zero.yaml", "qwen2.5-1.5b/r1.yaml", "qwen2.5-1.5b/grpo_lora_instruct.yaml",
            "llama/grpo_lora_instruct.yaml"} <= names


@pytest.mark.parametrize("path", REAL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_recipe_header_gives_command_and_hardware(path):
    header = path.read_text().split("\nname:")[0]
    assert f"r1lab run recipes/{path.parent.name}/{path.name} model=" in header
    assert "# Hardware:" in header


@pytest.mark.parametrize("path", REAL_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_real_recipe_runs_two_steps_on_a_tiny_model_of_its_architecture(path, tmp_path, monkeypatch):
    pytest.importorskip("math_verify")
    from transformers import AutoModelForCausalLM

    from r1lab.pipeline import run_recipe

    recipe = yaml.safe_load(path.read_text())
    if recipe.get("lora", {}).get("enabled"):
        pytest.importorskip("peft")
    model, arch = tiny_model_for(recipe, tmp_path)
    monkeypatch.chdir(ROOT)  # the recipe names data/math_sample.jsonl relative to the repository
    run_dir = run_recipe(path, smoke_overrides(recipe, model, tmp_path), quiet=True)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == list(recipe["stages"])
    for entry in summary["stages"]:
        if entry["data_file"]:  # a data stage: its output is a JSONL file, not a model
            assert entry["model"] is None and Path(entry["data_file"]).is_file()
            assert entry["eval"] is None and entry["data"]["rows"] > 0
            continue
        if entry["kind"] == "reward_model":  # the policy is unchanged; the reward model is beside it
            assert entry["eval"] is None and (Path(entry["reward_model"]) / "reward_model.json").is_file()
            continue
        assert 0.0 <= entry["eval"]["pass@1"] <= 1.0 and "pass@2" in entry["eval"]
        final = AutoModelForCausalLM.from_pretrained(entry["model"])  # plain transformers loads it
        assert final.config.model_type == arch
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for name, stage in recipe["stages"].items():
        if stage["kind"] in ("grpo", "ppo"):
            steps = [m for m in metrics if m["stage"] == name and "reward/mean" in m]
            assert len(steps) == 2
            for key in ("reward/accuracy", "reward/format", "kl", "clip_frac", "completion/length_mean"):
                assert all(key in m for m in steps), key


class ScriptedEngine:
    """Sample j of prompt i is correct when j < right[i]."""

    def __init__(self, right):
        self.right = right

    def generate(self, prompts, n, params):
        from r1lab.engine import Generation

        return [[Generation([1], [2], f"<think>x</think><answer>{'4' if j < self.right[i] else '5'}</answer>", False)
                 for j in range(n)] for i in range(len(prompts))]


def test_eval_reports_unbiased_pass_at_k(tmp_path):
    from r1lab.evaluate import evaluate_model
    from r1lab.tasks import get_task
    from r1lab.templates import PromptTemplate, TemplateConfig

    data = tmp_path / "two.jsonl"
    data.write_text('{"prompt": "2+2", "answer": "4"}\n{"prompt": "1+3", "answer": "4"}\n')
    task = get_task("dataset", path=str(data), test_path=str(data), verifier="math")
    summary = evaluate_model(ScriptedEngine([2, 0]), task, PromptTemplate(TemplateConfig(kind="plain")),
                             num_problems=2, k=4, temperature=0.6, top_p=0.95, max_new_tokens=8, seed=0)
    # problem 1: n = 4, c = 2: pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1; problem 2: c = 0: 0
    assert summary["pass@1"] == 0.25
    assert summary["pass@2"] == round(5 / 12, 4) and summary["pass@4"] == 0.5
    assert "pass@3" not in summary and "pass@8" not in summary
