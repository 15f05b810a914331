"""DPO trainer: log 2 at step 0, the chosen-minus-rejected log-ratio margin rises, micro-batches add up, a killed run
resumes to the same weights, bad rows are reported by file:line."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lab.data.jsonl import DataFileError, read_preference_pairs
from r1lab.models import load_model
from r1lab.encoding import encode_pairs
from r1lab.pipeline import run_recipe
from r1lab.stage import Stage
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.train.dpo import dpo_step, pair_logprobs, reference_logprobs


def toy_pairs(n=8):
    """The right answer is chosen, a wrong one of another length rejected."""
    return [{"prompt": f"{i}+1", "chosen": f"<think>{i}+1={i + 1}</think> <answer>{i + 1}</answer>",
             "rejected": f"<answer>{i + 7}0</answer>"} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def dpo_recipe(tmp_path, model, name, data, **stage):
    spec = {"name": name, "output_dir": str(tmp_path / "runs"), "model": str(model),
            "task": {"name": "arithmetic", "options": {"digits": 1}},
            "stages": {"dpo": {"kind": "dpo", "data": str(data), "batch_size": 4, "micro_batch_size": 2,
                               "lr": 2e-3, "warmup_ratio": 0.0, "eval_fraction": 0.0, "eval": False, **stage}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_loss_starts_at_log2_and_the_margin_rises(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    run_dir = run_recipe(dpo_recipe(tmp_path, tiny_checkpoint, "dpo", data, epochs=8), quiet=True)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    assert len(steps) == 16
    # policy == reference at the first step: every implicit reward is 0, the loss is -log σ(0) = log 2
    assert steps[0]["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert steps[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)
    assert steps[-1]["reward_margin"] > 0.5 and steps[-1]["reward_accuracy"] == 1.0
    assert steps[-1]["loss"] < 0.4 < math.log(2)

    # measured again from the saved policy against the starting model (the reference)
    reference, tok = load_model(str(tiny_checkpoint))
    policy, _ = load_model(str(run_dir / "dpo" / "final"))
    pairs = encode_pairs(tok, PromptTemplate(TemplateConfig(), tok), toy_pairs())
    ref = reference_logprobs(reference, pairs, tok.pad_token_id, 0, "cpu")
    with torch.no_grad():
        chosen, rejected = pair_logprobs(policy, pairs, tok.pad_token_id, "cpu")
    margin = (chosen - ref[:, 0]) - (rejected - ref[:, 1])  # log-ratio margin, β = 1
    assert (margin > 0).all()


def test_micro_batches_add_up_to_the_whole_batch(tiny_checkpoint):
    model, tok = load_model(str(tiny_checkpoint))
    pairs = encode_pairs(tok, PromptTemplate(TemplateConfig(), tok), toy_pairs(5))
    ref = reference_logprobs(model, pairs, tok.pad_token_id, 2, "cpu") - 0.3 * torch.arange(10.0).view(5, 2)
    results = []
    for micro in (0, 2):
        model.zero_grad()
        stats = dpo_step(model, pairs, ref, tok.pad_token_id, 0.1, micro, "cpu", backward=True)
        results.append((stats, [p.grad.clone() for p in model.parameters()]))
    (whole, grads_whole), (split, grads_split) = results
    for key in ("loss", "reward_accuracy", "reward_margin"):
        assert split[key] == pytest.approx(whole[key], abs=1e-6)
    for a, b in zip(grads_whole, grads_split):
        assert torch.allclose(a, b, atol=1e-6)


def test_killed_dpo_run_resumes_to_the_same_weights(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    run_recipe(dpo_recipe(tmp_path, tiny_checkpoint, "straight", data, epochs=2, save_every=1), quiet=True)
    log_metrics = Stage.log_metrics

    def killed_at_step_3(self, step, metrics):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        log_metrics(self, step, metrics)

    monkeypatch.setattr(Stage, "log_metrics", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(dpo_recipe(tmp_path, tiny_checkpoint, "killed", data, epochs=2, save_every=1), quiet=True)
    state = torch.load(tmp_path / "runs" / "killed" / "dpo" / "checkpoint" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2 and state["extra"]["ref_train"].shape == (8, 2)
    monkeypatch.setattr(Stage, "log_metrics", log_metrics)
    run_recipe(dpo_recipe(tmp_path, tiny_checkpoint, "killed", data, epochs=2, save_every=1), quiet=True)
    straight = load_file(tmp_path / "runs" / "straight" / "dpo" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "runs" / "killed" / "dpo" / "final" / "model.safetensors")
    for key in straight:  # the resumed run used the saved reference log-probs, not the moved policy's
        assert torch.equal(straight[key], resumed[key]), key


def test_bad_rows_name_file_line_and_field(tmp_path, tiny_checkpoint):
    pairs = toy_pairs(2)
    path = write_jsonl(tmp_path / "pairs.jsonl", [pairs[0], {"prompt": "1+1", "chosen": "2"}])
    with pytest.raises(DataFileError, match=r"pairs\.jsonl:2: row has no 'rejected' field \(keys: chosen, prompt\)"):
        read_preference_pairs(path)
    write_jsonl(path, [pairs[0], {**pairs[1], "chosen": ["2"]}])
    with pytest.raises(DataFileError, match=r"pairs\.jsonl:2: 'chosen' must be a string, got list"):
        run_recipe(dpo_recipe(tmp_path, tiny_checkpoint, "bad", path), quiet=True)
