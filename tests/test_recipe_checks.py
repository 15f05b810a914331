"""Every setting of a recipe is checked before any stage starts (r1lab.pipeline.load_recipe: each config's own checks,
then r1lab.recipe_checks across stages), every problem at once, each naming its key, value, what is allowed and where
the value came from."""

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from r1lab.config import ConfigError
from r1lab.generation import DataSamplingConfig
from r1lab.pipeline import STAGE_KINDS, load_recipe
from r1lab.recipe import DTYPES, ENGINES
from r1lab.recipe_checks import DATA_KINDS, PASS_THROUGH_KINDS, REWARD_MODEL_KINDS, check_recipe
from r1lab.side_by_side import run_side_by_side

ROOT = Path(__file__).resolve().parents[1]


def recipe(tmp_path, **changes) -> Path:
    """A small valid recipe (every kind of reference between stages), with top-level ``changes``."""
    data = {
        "name": "t", "output_dir": str(tmp_path / "runs"),
        "stages": {
            "base": {"kind": "pretrain"},
            "grpo": {"kind": "grpo", "rewards": {"accuracy": 1.0, "format": 0.1}},
            "rs": {"kind": "rejection_sampling", "init": "grpo"},
            "sft": {"kind": "sft", "init": "base", "data": "rs"},
            "pairs": {"kind": "preference_pairs", "init": "sft"},
            "rm": {"kind": "reward_model", "init": "sft", "data": "pairs"},
            "rl": {"kind": "ppo", "init": "sft", "value_init": "rm",
                   "rewards_by_task": {"domain": {"reward_model:rm": 1.0}}},
        },
        **changes,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def problems_of(path, overrides=()) -> list[str]:
    """The problem lines of the ConfigError that loading ``path`` raises (none: the recipe is fine)."""
    try:
        load_recipe(path, list(overrides))
    except ConfigError as err:
        return str(err).splitlines()[1:]
    return []


def test_the_shipped_recipes_and_the_test_recipe_pass():
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        assert problems_of(path) == [], path


def test_the_test_recipe_passes(tmp_path):
    assert problems_of(recipe(tmp_path)) == []


# bad input (as an override) -> what the message says about it
BAD = [
    ("stages.grpo.steps=0", "stages.grpo.steps = 0: must be at least 1"),
    ("stages.grpo.prompts_per_step=0", "stages.grpo.prompts_per_step = 0: must be at least 1"),
    ("stages.grpo.group_size=1", "stages.grpo.group_size = 1: must be at least 2"),
    ("stages.rl.group_size=0", "stages.rl.group_size = 0: must be at least 1"),
    ("stages.grpo.max_new_tokens=0", "stages.grpo.max_new_tokens = 0: must be at least 1"),
    ("eval.k=0", "eval.k = 0: must be at least 1"),
    ("eval.num_problems=0", "eval.num_problems = 0: must be at least 1"),
    ("eval.temperature=-0.1", "eval.temperature = -0.1: must be at least 0 (0: greedy)"),
    ("stages.grpo.temperature=0", "stages.grpo.temperature = 0.0: must be > 0 for RL rollouts"),
    ("stages.rl.temperature=0", "stages.rl.temperature = 0.0: must be > 0 for RL rollouts"),
    ("stages.pairs.temperature=0", "stages.pairs.temperature = 0.0: must be > 0: greedy completions"),
    ("stages.grpo.top_p=0", "stages.grpo.top_p = 0.0: must be in (0, 1]"),
    ("stages.rs.top_p=1.2", "stages.rs.top_p = 1.2: must be in (0, 1]"),
    ("eval.top_p=2", "eval.top_p = 2.0: must be in (0, 1]"),
    ("stages.grpo.lr=0", "stages.grpo.lr = 0.0: must be > 0"),
    ("stages.sft.lr=-1e-5", "stages.sft.lr = -1e-05: must be > 0"),
    ("stages.base.lr=0", "stages.base.lr = 0.0: must be > 0"),
    ("stages.grpo.save_every=-1", "stages.grpo.save_every = -1: must be at least 0"),
    ("stages.sft.eval_every=-5", "stages.sft.eval_every = -5: must be at least 0"),
    ("dtype=float64", "dtype = 'float64': must be one of float32, fp32, bfloat16, bf16, float16, fp16"),
    ("device=gpu", "device = 'gpu': must be auto, cpu, cuda, cuda:N"),
    ("device=cuda:x", "device = 'cuda:x': must be auto, cpu, cuda, cuda:N"),
    ("engine=vllm", "engine = 'vllm': must be one of auto, fast, transformers, hf"),
    ("precision=fp8", "precision = 'fp8': must be one of full, bf16-mixed"),
    ("threads=-1", "threads = -1: must be at least 0"),
    ("name=../elsewhere", "name = '../elsewhere': must be a plain folder name inside output_dir"),
    ("name=/tmp/abs", "name = '/tmp/abs': must be a plain folder name inside output_dir"),
    ("name=a/b", "name = 'a/b': must be a plain folder name inside output_dir"),
    ("stages.sft.init=grop", "stages.sft.init = 'grop': must be an earlier stage (base, grpo), 'model' (the run's "
                             "model: tiny), an existing model folder or a hub id like org/name; 'grop' is none of "
                             "these; did you mean 'grpo'?"),
    ("stages.sft.init=rl", "stages.sft.init = 'rl': stage 'rl' runs after this one"),
    ("stages.sft.init=rs", "stages.sft.init = 'rs': 'rs' is a rejection_sampling stage: its output is a data file"),
    ("stages.rl.value_init=runs/x/y/final", "stages.rl.value_init = 'runs/x/y/final': must be an earlier stage"),
    ("stages.pairs.init=model", "stages.pairs.init = 'model': the stage would start from model 'tiny'"),
    ("stages.rl.value_init=model", "stages.rl.value_init = 'model': the run's model is 'tiny', which only a pretrain "
                                   "stage builds"),
    ("stages.sft.data=rl", "stages.sft.data = 'rl': stage 'rl' runs after this one"),
    ("stages.sft.data=grpo", "stages.sft.data = 'grpo': 'grpo' is a grpo stage: its output is a model"),
    ("stages.sft.data=missing.jsonl", "stages.sft.data = 'missing.jsonl': must be an existing JSONL file or an "
                                      "earlier stage that writes one (rs)"),
    ("stages.grpo.rewards={acuracy: 1.0}", "stages.grpo.rewards = 'acuracy': unknown reward 'acuracy'"),
    ("stages.grpo.rewards={'nope.py:f': 1.0}", "stages.grpo.rewards = 'nope.py:f': reward 'nope.py:f': file "
                                               "'nope.py' not found"),
    ("stages.rl.rewards_by_task={domain: {'reward_model:pairs': 1}}",
     "stages.rl.rewards_by_task.domain = 'reward_model:pairs': 'pairs' is a preference_pairs stage, not a "
     "reward_model stage (reward_model stages before this one: rm)"),
    ("stages.grpo.rewards={'reward_model:rm': 1}",
     "stages.grpo.rewards = 'reward_model:rm': stage 'rm' runs after this one"),
    ("task.name=arithmetc", "task.name = 'arithmetc': must be one of"),
    ("task.options={digitz: 2}", "task.options.digitz = 2: task 'arithmetic' has no such option"),
    ("stages.grpo.task.name=mixtur", "stages.grpo.task.name = 'mixtur': must be one of"),
    ("model=not/a/model", "model = 'not/a/model': must be 'tiny' (built by a pretrain stage), an existing model "
                          "folder or a hub id like org/name"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[item[0] for item in BAD])
def test_a_bad_setting_is_named_with_its_value_what_is_allowed_and_where_it_came_from(tmp_path, override, expected):
    lines = problems_of(recipe(tmp_path), [override])
    matching = [line for line in lines if line.strip().startswith(expected)]
    assert matching, f"{override}: no line starts with {expected!r} in {lines}"
    assert matching[0].endswith(f"[command line: {override}]")


def test_values_from_the_file_name_the_file_and_all_problems_come_together(tmp_path):
    stages = yaml.safe_load(recipe(tmp_path).read_text())["stages"]
    stages["grpo"].update(top_p=1.5, init="grop")
    path = recipe(tmp_path, stages=stages, device="gpu")
    with pytest.raises(ConfigError) as err:
        load_recipe(path, ["stages.sft.lr=0"])
    head, *lines = str(err.value).splitlines()
    assert head == f"{path}: 4 problems; nothing has run:"
    assert lines[0] == f"  device = 'gpu': must be auto, cpu, cuda, cuda:N (N a GPU number) or mps  [{path}]"
    assert any(line.startswith("  stages.grpo.top_p = 1.5") and line.endswith(f"[{path}]") for line in lines)
    assert any(line.startswith("  stages.grpo.init = 'grop'") and "did you mean 'grpo'" in line for line in lines)
    assert any(line.endswith("[command line: stages.sft.lr=0]") for line in lines)


def test_greedy_is_allowed_where_it_makes_sense(tmp_path):
    assert problems_of(recipe(tmp_path), ["eval.temperature=0", "stages.rs.temperature=0"]) == []


def test_references_that_exist_on_disk_or_look_like_a_hub_id_pass(tmp_path):
    folder = tmp_path / "teacher"
    folder.mkdir()
    (tmp_path / "rows.jsonl").write_text("{}\n")
    (tmp_path / "reward_folder").mkdir()
    assert problems_of(recipe(tmp_path), [f"stages.rs.init={folder}", "stages.grpo.init=Qwen/Qwen2.5-0.5B",
                                          f"stages.sft.data={tmp_path / 'rows.jsonl'}",
                                          f"stages.grpo.rewards={{'reward_model:{tmp_path / 'reward_folder'}': 1}}"]) == []
    lines = problems_of(recipe(tmp_path), [f"stages.rs.init={tmp_path / 'rows.jsonl'}"])
    assert lines and "is a file; give a model folder" in lines[0]


def test_a_misspelt_init_fails_at_once_instead_of_trying_the_hub(tmp_path):
    started = time.perf_counter()
    lines = problems_of(recipe(tmp_path), ["stages.sft.init=grop"])
    assert lines and time.perf_counter() - started < 1.0


def test_stage_names_are_plain_folder_names(tmp_path):
    stages = yaml.safe_load(recipe(tmp_path).read_text())["stages"]
    stages["../x"] = {"kind": "check_gate"}
    stages["model"] = {"kind": "check_gate"}
    lines = problems_of(recipe(tmp_path, stages=stages))
    assert any("stage name '../x' must be a plain folder name" in line for line in lines)
    assert any("stage name 'model' is taken" in line for line in lines)


def test_the_checks_take_milliseconds_on_the_r1_recipe():
    run, stages = load_recipe(ROOT / "recipes/tiny/r1.yaml")
    kinds = {name: cfg.kind for name, cfg in stages.items()}
    started = time.perf_counter()
    for _ in range(10):
        assert check_recipe(run, stages, kinds) == []
    assert (time.perf_counter() - started) / 10 < 0.1
    started = time.perf_counter()
    load_recipe(ROOT / "recipes/tiny/r1.yaml")  # reading, every config's checks and those across stages
    assert time.perf_counter() - started < 0.5


def test_the_recipe_checks_need_no_torch():
    code = "import sys, r1lab.recipe_checks; sys.exit('torch' in sys.modules or 'transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_the_kinds_the_checks_know_are_the_pipelines():
    data_writers = {kind for kind, cls in STAGE_KINDS.items() if issubclass(cls, DataSamplingConfig)}
    assert DATA_KINDS == data_writers
    assert PASS_THROUGH_KINDS <= set(STAGE_KINDS) and REWARD_MODEL_KINDS <= set(STAGE_KINDS)
    # every stage kind that starts from a model has the field the checks read
    for kind, cls in STAGE_KINDS.items():
        assert kind == "pretrain" or "init" in {f.name for f in dataclasses.fields(cls)}, kind


def test_the_dtype_and_engine_names_are_those_the_loaders_accept(tiny_checkpoint):
    from r1lab.engine import make_engine
    from r1lab.models import load_model, resolve_dtype

    for name in DTYPES:
        resolve_dtype(name)
    for name in ("float64", "half", "float", "int8"):
        assert name not in DTYPES
        with pytest.raises(ValueError):
            resolve_dtype(name)
    model, tokenizer = load_model(str(tiny_checkpoint), dtype="float32", device=resolve_device_cpu())
    for name in ENGINES:
        make_engine(name, model, tokenizer)
    with pytest.raises(ValueError, match="unknown generation engine"):
        make_engine("vllm", model, tokenizer)


def resolve_device_cpu():
    from r1lab.models import resolve_device

    return resolve_device("cpu")


def test_side_by_side_reports_the_problems_of_every_recipe_and_a_bad_jobs_before_anything_runs(tmp_path):
    first = recipe(tmp_path, device="gpu")
    second = tmp_path / "second.yaml"
    second.write_text(first.read_text().replace("name: t", "name: u").replace("device: gpu", "engine: vllm"))
    with pytest.raises(ConfigError) as err:
        run_side_by_side([str(first), str(second)], [])
    assert "device = 'gpu'" in str(err.value) and "engine = 'vllm'" in str(err.value)
    assert str(first) in str(err.value) and str(second) in str(err.value)
    with pytest.raises(ConfigError, match=r"--jobs = -1 \(command line\): must be at least 1"):
        run_side_by_side([str(ROOT / "recipes/tiny/aha.yaml"), str(ROOT / "recipes/tiny/ppo.yaml")], [], jobs=-1)
    assert not (tmp_path / "runs").exists()


def test_bf16_mixed_needs_fp32_master_weights(tmp_path):
    lines = problems_of(recipe(tmp_path), ["precision=bf16-mixed", "dtype=bfloat16"])
    assert any(line.strip().startswith("precision = 'bf16-mixed': bf16-mixed keeps fp32 master weights: set dtype: "
                                       "float32 (it is bfloat16)") for line in lines), lines
    assert not problems_of(recipe(tmp_path), ["precision=bf16-mixed"])


def test_parallel_is_checked_and_fsdp2_refuses_lora(tmp_path):
    found = [p.strip() for p in problems_of(recipe(tmp_path, parallel="zero3"))]
    assert len(found) == 1 and found[0].startswith("parallel = 'zero3': must be one of ddp, fsdp2"), found
    found = [p.strip() for p in problems_of(recipe(tmp_path, parallel="fsdp2", lora={"enabled": True}))]
    assert any(p.startswith("parallel = 'fsdp2': LoRA adapters are not sharded yet") for p in found), found
    assert problems_of(recipe(tmp_path, parallel="fsdp2")) == []  # every stage kind runs sharded
