import dataclasses
import textwrap

import pytest

from r1lab.config import ConfigError, apply_overrides, field_docs, from_dict
from r1lab.pipeline import STAGE_KINDS, EvalConfig, RunConfig, TaskConfig, load_recipe
from r1lab.templates import TemplateConfig


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


MINIMAL = """
name: t
stages:
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
    with pytest.raises(ConfigError, match="group_size must be at least 2"):
        load_recipe(write(tmp_path, MINIMAL + "    group_size: 1\n"))


def test_missing_recipe_file():
    with pytest.raises(ConfigError, match="not found"):
        load_recipe("/nonexistent/recipe.yaml")


@pytest.mark.parametrize("cls", [RunConfig, TaskConfig, EvalConfig, TemplateConfig, *STAGE_KINDS.values()])
def test_every_config_field_has_a_doc(cls):
    missing = [name for name, text in field_docs(cls).items() if not text.strip()]
    assert not missing, f"{cls.__name__} fields without a doc: {missing}"


def test_from_dict_rejects_bool_for_int_and_accepts_int_for_float():
    @dataclasses.dataclass
    class C:
        a: int = 1
        b: float = 1.0

    assert from_dict(C, {"b": 2}).b == 2.0
    with pytest.raises(ConfigError):
        from_dict(C, {"a": True})


def test_stage_init_resolution():
    from r1lab.pipeline import _resolve_init

    summary = {"stages": [{"stage": "rs", "checkpoint": "runs/x/rs/data.jsonl"}]}
    assert _resolve_init("", "previous", summary, "student") == "previous"
    assert _resolve_init("model", "previous", summary, "student") == "student"  # e.g. distillation after a data stage
    assert _resolve_init("rs", "previous", summary, "student") == "runs/x/rs/data.jsonl"
    assert _resolve_init("/path/teacher", "previous", summary, "student") == "/path/teacher"
