import dataclasses
import json
import textwrap
from typing import Literal

import pytest

from r1lab.config import (ConfigError, apply_overrides, describe_fields, doc, field_docs, from_dict, override_keys,
                          render_fields)
from r1lab.pipeline import STAGE_KINDS, EvalConfig, RunConfig, load_recipe
from r1lab.tasks import TaskConfig
from r1lab.templates import TemplateConfig


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
name: t
stages:
  base:
    kind: pretrain
  grpo:
    kind: grpo
    steps: 3
"""


def test_minimal_recipe_reads_with_defaults(tmp_path):
    run, stages = load_recipe(write(tmp_path, MINIMAL))
    assert run.name == "t" and run.eval.k == 4 and run.eval.temperature == 0.6
    assert stages["grpo"].steps == 3 and stages["grpo"].group_size == 8


def test_unknown_top_level_key_names_key_and_file(tmp_path):
    path = write(tmp_path, MINIMAL + "learning_rate: 3\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    assert "learning_rate" in str(err.value) and str(path) in str(err.value)


def test_unknown_stage_key_names_dotted_path(tmp_path):
    path = write(tmp_path, MINIMAL + "    lr_max: 1\n")
    with pytest.raises(ConfigError, match=r"stages\.grpo\.lr_max"):
        load_recipe(path)


def test_unknown_stage_kind_and_missing_kind(tmp_path):
    with pytest.raises(ConfigError, match="unknown kind 'ppx'"):
        load_recipe(write(tmp_path, "name: t\nstages:\n  a: {kind: ppx}\n"))
    with pytest.raises(ConfigError, match="needs a 'kind'"):
        load_recipe(write(tmp_path, "name: t\nstages:\n  a: {steps: 1}\n"))


def test_type_errors_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\.grpo\.steps.*integer"):
        load_recipe(write(tmp_path, MINIMAL.replace("steps: 3", "steps: many")))
    with pytest.raises(ConfigError, match=r"loss_aggregation.*one of"):
        load_recipe(write(tmp_path, MINIMAL + "    loss_aggregation: mean\n"))


def test_overrides_reach_nested_fields_and_parse_yaml_values(tmp_path):
    run, stages = load_recipe(write(tmp_path, MINIMAL),
                              ["stages.grpo.steps=7", "eval.k=2", "stages.grpo.lr=1e-5", "name=other"])
    assert stages["grpo"].steps == 7 and run.eval.k == 2 and stages["grpo"].lr == 1e-5 and run.name == "other"
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["stages.grpo.steps"])
    with pytest.raises(ConfigError, match="unknown key 'eval.kk'"):
        load_recipe(write(tmp_path, MINIMAL), ["eval.kk=3"])


def test_validation_in_post_init_is_reported(tmp_path):
    with pytest.raises(ConfigError, match=r"stages\.grpo\.group_size = 1: must be at least 2"):
        load_recipe(write(tmp_path, MINIMAL + "    group_size: 1\n"))


def test_every_problem_is_reported_at_once_with_key_value_allowed_and_origin(tmp_path):
    path = write(tmp_path, MINIMAL + "    top_p: 1.5\n    lr_max: 1\n    steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path, ["stages.grpo.temperature=0", "eval.k=0"])
    message = str(err.value)
    assert message.startswith(f"{path}: 5 problems")
    lines = message.splitlines()[1:]
    assert any(line.startswith("  stages.grpo.top_p = 1.5: must be in (0, 1]") and line.endswith(f"[{path}]")
               for line in lines)
    assert any("unknown key 'stages.grpo.lr_max'" in line for line in lines)
    assert any("stages.grpo.steps = 'many': must be an integer" in line for line in lines)
    # the values typed as overrides are said to come from the command line
    assert any(line.startswith("  stages.grpo.temperature = 0.0: must be > 0 for RL rollouts")
               and line.endswith("[command line: stages.grpo.temperature=0]") for line in lines)
    assert any(line.startswith("  eval.k = 0: must be at least 1") and line.endswith("[command line: eval.k=0]")
               for line in lines)


def test_a_config_built_in_code_reports_all_its_problems():
    from r1lab.train.grpo import GRPOConfig

    with pytest.raises(ConfigError) as err:
        GRPOConfig(steps=0, top_p=0.0, lr=-1.0)
    assert str(err.value) == "steps = 0: must be at least 1; top_p = 0.0: must be in (0, 1]; lr = -1.0: must be > 0"
    with pytest.raises(ConfigError, match="minibatches = 3: must divide prompts_per_step × group_size"):
        GRPOConfig(minibatches=3)
    with pytest.raises(ConfigError, match="minibatches = 0: must be at least 1"):
        GRPOConfig(minibatches=0)  # reported, not a ZeroDivisionError


def test_override_keys():
    assert override_keys(["a.b=1", "x", "c= 2", "a.b=3"]) == {"a.b": "a.b=3", "c": "c= 2"}


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("cls", [RunConfig, TaskConfig, EvalConfig, TemplateConfig, *STAGE_KINDS.values()])
def test_every_config_field_has_a_doc(cls):
    missing = [name for name, text in field_docs(cls).items() if not text.strip()]
    assert not missing, f"{cls.__name__} fields without a doc: {missing}"
    nested = [key for key, _, _, text in describe_fields(cls) if not text.strip()]  # sections' fields too
    assert not nested, f"{cls.__name__} nested fields without a doc: {nested}"


@dataclasses.dataclass
class _Adapters:
    r: int = doc(16, "Adapter rank.")
    targets: list[str] = doc(["q_proj"], "Layers that get adapters.")


@dataclasses.dataclass
class _Stage:
    lr: float = doc(1e-4, "Peak learning rate.")
    clip_high: float | None = doc(None, "Upper clip (empty: the lower one).")
    schedule: Literal["constant", "cosine"] = doc("constant", "Decay after warmup.")
    lora: _Adapters = doc(_Adapters(), "Adapter settings.")
    rewards: dict[str, float] = doc({"accuracy": 1.0}, "Reward -> weight.")
    name: str = doc("", "Name (empty: none).")


def test_describe_fields_lists_nested_keys_types_defaults_and_docs():
    assert describe_fields(_Stage) == [
        ("lr", "float", "0.0001", "Peak learning rate."),
        ("clip_high", "float | None", "null", "Upper clip (empty: the lower one)."),
        ("schedule", "constant|cosine", '"constant"', "Decay after warmup."),
        ("lora", "section", "", "Adapter settings."),
        ("lora.r", "int", "16", "Adapter rank."),
        ("lora.targets", "list[str]", '["q_proj"]', "Layers that get adapters."),
        ("rewards", "dict[str, float]", '{"accuracy": 1.0}', "Reward -> weight."),
        ("name", "str", '""', "Name (empty: none)."),
    ]
    assert describe_fields(_Adapters, prefix="stages.x.")[0][0] == "stages.x.r"


def test_render_fields_one_aligned_line_per_field():
    rows = describe_fields(_Stage)
    lines = render_fields(rows).splitlines()
    assert len(lines) == len(rows)
    for line, (key, type_, default, text) in zip(lines, rows):
        assert line.split()[0] == key and type_ in line and default in line and line.endswith(text)
    assert len({line.index(text) for line, (*_, text) in zip(lines, rows)}) == 1  # docs start in one column
    assert render_fields([]) == ""


def test_describe_fields_of_the_real_configs():
    grpo = {key: (type_, default, text) for key, type_, default, text in describe_fields(STAGE_KINDS["grpo"])}
    assert grpo["clip_eps"][:2] == ("float", "0.2") and "ε" in grpo["clip_eps"][2]
    assert grpo["kl_coef"][0] == "float" and grpo["task.name"][0] == "str"
    run = {key: default for key, _, default, _ in describe_fields(RunConfig)}
    assert run["lora.r"] == "16" and run["eval.k"] == "4" and run["lora.enabled"] == "false"


def test_from_dict_rejects_bool_for_int_and_accepts_int_for_float():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: float = 1.0

    assert from_dict(C, {"b": 2}).b == 2.0
    with pytest.raises(ConfigError):
        from_dict(C, {"a": True})


def test_stage_init_resolution(tmp_path):
    from r1lab.stage import RunOutputs

    data = tmp_path / "run" / "rs" / "data.jsonl"
    for name, entry in {"rs": {"kind": "rejection_sampling", "model": None, "data_file": str(data)},
                        "rl": {"kind": "grpo", "model": "runs/x/rl/final", "data_file": None}}.items():
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "done.json").write_text(json.dumps({"stage": name, **entry}))
    data.write_text("{}\n")
    outputs = RunOutputs(tmp_path / "run", "student")
    assert outputs.model("", default="previous") == "previous"
    assert outputs.model("model", default="previous") == "student"  # e.g. distillation after a data stage
    assert outputs.model("rl", default="previous") == "runs/x/rl/final"
    assert outputs.model("/path/teacher", default="previous") == "/path/teacher"
    with pytest.raises(ConfigError, match="stage 'sft': 'rs' is a rejection_sampling stage whose output is the data"):
        outputs.model("rs", default="previous", stage="sft")  # a data set is not a model
    with pytest.raises(ConfigError, match="is a file, not a model folder"):
        outputs.model(str(data), default="previous", stage="sft")


def test_nested_defaults_come_from_the_enclosing_fields_default():
    """A stage's task override defaults to an empty name (the run's task), not to TaskConfig's own default."""
    from r1lab.train.grpo import GRPOConfig

    rows = {key: default for key, _, default, _ in describe_fields(GRPOConfig)}
    assert rows["task.name"] == '""' and rows["adam_betas"] == "[0.9, 0.99]"
    assert {key: default for key, _, default, _ in describe_fields(RunConfig)}["task.name"] == '"arithmetic"'


def test_a_recipe_not_found_outside_the_checkout_names_r1labs_own(tmp_path, monkeypatch):
    from pathlib import Path

    from r1lab.config import read_yaml

    monkeypatch.chdir(tmp_path)
    own = Path(__file__).resolve().parents[1] / "recipes" / "tiny" / "r1_zero.yaml"
    with pytest.raises(ConfigError, match=rf"recipe file not found: recipes/tiny/r1_zero.yaml \(here is r1lab's "
                                          rf"own: {own}\)"):
        read_yaml("recipes/tiny/r1_zero.yaml")
    with pytest.raises(ConfigError, match=r"recipes/tiny/nope.yaml \(r1lab's example recipes come with its "
                                          r"repository"):
        read_yaml("recipes/tiny/nope.yaml")
    with pytest.raises(ConfigError, match=r"recipe file not found: mine.yaml$"):
        read_yaml("mine.yaml")
