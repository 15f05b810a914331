"""LoRA policies: only adapters train, the reference is the model with adapters off, checkpoints load in plain
transformers, a resumed stage gets its adapter back, and QLoRA on CPU is a clear error."""

import json

import pytest
import torch
import yaml

pytest.importorskip("peft")

from test_models import make_real_architecture  # noqa: E402  (tests/ is on sys.path under pytest)

from r1lab.config import ConfigError  # noqa: E402
from r1lab.lora import LoraConfig, is_lora_model, load_lora_policy  # noqa: E402
from r1lab.logprobs import make_batch, completion_logprobs  # noqa: E402
from r1lab.models import load_model  # noqa: E402
from r1lab.pipeline import RunConfig, load_recipe, run_recipe  # noqa: E402


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return make_real_architecture(tmp_path_factory.mktemp("arch"), "qwen2")


def lora_run(model, **lora):
    return RunConfig(model=str(model), lora=LoraConfig(enabled=True, r=4, alpha=8, **lora))


def batch_for(tokenizer):
    prompts = [tokenizer("347+589 so")["input_ids"], tokenizer("<think>")["input_ids"]]
    completions = [tokenizer(" 936 </answer>")["input_ids"], tokenizer(" 347 </think>")["input_ids"]]
    return make_batch(prompts, completions, tokenizer.pad_token_id)


def perturb_adapters(model, seed=0):
    """Fresh adapters are the identity (B = 0); give them a non-zero update as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)


def test_only_adapters_train_and_the_reference_is_the_base(qwen2, tmp_path):
    model, tokenizer = load_lora_policy(lora_run(qwen2), str(qwen2), tmp_path / "checkpoint", torch.device("cpu"))
    assert is_lora_model(model)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    perturb_adapters(model)
    batch = batch_for(tokenizer)
    base, _ = load_model(str(qwen2))
    with torch.no_grad():
        base_logprobs = completion_logprobs(base, batch)[0]
        with model.disable_adapter():
            reference = completion_logprobs(model, batch)[0]
        policy = completion_logprobs(model, batch)[0]
    assert torch.allclose(reference, base_logprobs, atol=1e-5)  # adapters off = the starting model, no copy
    assert not torch.allclose(policy, base_logprobs, atol=1e-3)
    completion_logprobs(model, batch)[0].sum().backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert all(grads[name] is not None for name in trainable)
    assert all(g is None for name, g in grads.items() if "lora_" not in name)


def test_saved_checkpoint_is_merged_and_loads_in_plain_transformers(qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1lab.models import save_model

    model, tokenizer = load_lora_policy(lora_run(qwen2), str(qwen2), tmp_path / "none", torch.device("cpu"))
    perturb_adapters(model)
    x = torch.tensor([tokenizer("347+589 so 936")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=x).logits
    save_model(model, tokenizer, tmp_path / "final")  # the pipeline's own save path
    assert (tmp_path / "final" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "final" / "adapter_config.json").exists()  # a plain model folder, not an adapter one
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "final")
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=x).logits, expected, atol=1e-4)
        assert torch.allclose(model(input_ids=x).logits, expected)  # saving left the training model alone
    # a resumed stage: the base again from its init checkpoint, the adapter from checkpoint/adapter
    resumed, _ = load_lora_policy(lora_run(qwen2), str(qwen2), tmp_path / "final", torch.device("cpu"))
    with torch.no_grad():
        assert torch.allclose(resumed(input_ids=x).logits, expected, atol=1e-5)
    assert any(p.requires_grad for p in resumed.parameters())


def test_save_weights_writes_merged_weights_and_the_adapter(qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    from r1lab.models import save_weights

    model, tokenizer = load_lora_policy(lora_run(qwen2), str(qwen2), tmp_path / "none", torch.device("cpu"))
    assert "save_pretrained" not in vars(model)  # peft's own method, not replaced on the instance
    perturb_adapters(model, seed=1)
    x = torch.tensor([tokenizer("347+589 so 936")["input_ids"]])
    with torch.no_grad():
        expected = model(input_ids=x).logits
    save_weights(model, tmp_path / "weights")
    assert (tmp_path / "weights" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "weights" / "model.safetensors").is_file()
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "weights")
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=x).logits, expected, atol=1e-4)


def test_qlora_on_cpu_is_a_clear_error(qwen2, tmp_path):
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        load_lora_policy(lora_run(qwen2, load_in_4bit=True), str(qwen2), tmp_path, torch.device("cpu"))


def write_recipe(tmp_path, model, **stage):
    rewards = tmp_path / "spread.py"  # a random model earns no real reward: any reward that differs will do
    rewards.write_text("def spread(completion, example):\n    return float(sum(map(ord, completion)) % 7)\n")
    recipe = {
        "name": "lora", "output_dir": str(tmp_path / "runs"), "model": str(model), "device": "cpu", "threads": 1,
        "keep_checkpoints": True,  # the test resumes a finished stage from its checkpoint
        "lora": {"enabled": True, "r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]},
        "task": {"name": "arithmetic", "options": {"digits": 1}},
        "template": {"kind": "plain"},
        "eval": {"num_problems": 2, "k": 2, "max_new_tokens": 4, "quick_problems": 2, "quick_k": 1},
        "stages": {"grpo": {"kind": "grpo", "steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 6,
                            "lr": 0.05, "warmup_steps": 1, "kl_coef": 0.1, "eval_every": 0, "save_every": 1,
                            "rewards": {f"{rewards}:spread": 1.0}, **stage}},
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_grpo_with_lora_two_steps(qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    path = write_recipe(tmp_path, qwen2)
    run_dir = run_recipe(path, quiet=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "kl" in m]
    assert len(steps) == 2 and all(m["kl"] >= 0 for m in steps)
    assert steps[0]["kl"] == 0.0  # fresh adapters (B = 0): the policy is the reference
    final = run_dir / "grpo" / "final"
    plain = AutoModelForCausalLM.from_pretrained(final)  # merged weights, plain transformers
    base = AutoModelForCausalLM.from_pretrained(qwen2)
    moved = {k for k, v in plain.state_dict().items() if not torch.equal(v, base.state_dict()[k])}
    assert moved and all(any(t in k for t in ("q_proj", "v_proj", "up_proj")) for k in moved)  # only adapted layers
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stages"][0]["eval"]["k"] == 2
    # resume: the step-1 checkpoint holds the adapter and the optimizer state of the adapter parameters
    assert (run_dir / "grpo" / "checkpoint" / "adapter" / "adapter_config.json").is_file()
    (run_dir / "grpo" / "done.json").unlink()
    run_recipe(path, ["stages.grpo.steps=3", "stages.grpo.eval=false"], quiet=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "kl" in m] == [1, 2, 3]  # resumed after step 1, step 2's old line dropped


def test_lora_recipe_keys_are_checked(qwen2, tmp_path):
    run, _ = load_recipe(write_recipe(tmp_path, qwen2))
    assert run.lora.enabled and run.lora.target_modules == ["q_proj", "v_proj", "up_proj"]
    with pytest.raises(ConfigError, match="unknown key 'lora.rank'"):
        load_recipe(write_recipe(tmp_path, qwen2), ["lora.rank=8"])


def test_every_lora_field_has_a_doc():
    from r1lab.config import field_docs

    assert all(text.strip() for text in field_docs(LoraConfig).values())


def test_activation_checkpointing_is_on_and_says_no_deprecation(qwen2, tmp_path):
    """Activation checkpointing through transformers' current name (the old one warns until v6), with LoRA too
    (peft still calls the old names: silenced), gradients as without it."""
    import warnings

    from r1lab.policy import ModelSettings, Policy

    cpu = torch.device("cpu")
    plain = Policy.load(str(qwen2), ModelSettings(), cpu).model
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        checkpointed = Policy.load(str(qwen2), ModelSettings(gradient_checkpointing=True), cpu).model
        run = lora_run(qwen2)
        run.gradient_checkpointing = True
        lora_model, tokenizer = load_lora_policy(run, str(qwen2), None, cpu)
    assert not [w for w in caught if "checkpointing" in str(w.message)], [str(w.message) for w in caught]
    def checkpointing(model) -> bool:  # transformers >= 5.24's name, else the older one
        new_name = hasattr(model, "is_activation_checkpointing")
        return getattr(model, "is_activation_checkpointing" if new_name else "is_gradient_checkpointing")

    assert checkpointing(checkpointed) and not checkpointing(plain)
    assert checkpointing(lora_model.get_base_model())
    batch = batch_for(tokenizer)
    for model in (plain, checkpointed):
        model.train()
        completion_logprobs(model, batch)[0].sum().backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name
