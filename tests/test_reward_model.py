"""Reward-model trainer: it learns a separable preference, the score is read at the completion's last token, a
save/load round trip scores identically, the reward function wraps it, the policy passes through the stage."""

import json

import pytest
import torch
import yaml

from r1lab.data.jsonl import DataFileError
from r1lab.logprobs import make_batch
from r1lab.models import load_tokenizer
from r1lab.pipeline import run_recipe
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.encoding import encode_texts, split_response
from r1lab.rewards.reward_model import (RewardModel, load_reward_model, make_reward_model_reward, save_reward_model,
                                        sequence_scores)
from r1lab.value_model import init_value_model


def toy_pairs(n=16):
    """Separable: the polite answer is always chosen."""
    return [{"prompt": f"say hi {i}", "chosen": f"hello, friend {i}!", "rejected": f"go away {i}"} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def rm_recipe(tmp_path, model, data, **stage):
    spec = {"name": "rm", "output_dir": str(tmp_path / "runs"), "model": str(model),
            "task": {"name": "arithmetic", "options": {"digits": 1}},
            "stages": {"rm": {"kind": "reward_model", "data": str(data), "batch_size": 8, "micro_batch_size": 4,
                              "lr": 3e-3, "warmup_ratio": 0.0, "eval_fraction": 0.25, **stage}}}
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_reward_model_learns_a_separable_preference(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "pairs.jsonl", toy_pairs())
    run_dir = run_recipe(rm_recipe(tmp_path, tiny_checkpoint, data, epochs=15), quiet=True)
    [entry] = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert entry["model"] == str(tiny_checkpoint)  # the policy passes through
    assert entry["reward_model"] == str(run_dir / "rm" / "final")
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert 0 < metrics[0]["data/eval_pairs"] < 16
    steps = [m for m in metrics if "loss" in m]
    assert steps[-1]["loss"] < 0.5 * steps[0]["loss"]
    assert steps[-1]["accuracy"] == 1.0 and steps[-1]["margin"] > 0
    assert steps[-1]["eval/accuracy"] == 1.0  # held-out prompts too

    reward_model = load_reward_model(run_dir / "rm" / "final")
    pairs = toy_pairs()
    chosen = reward_model.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = reward_model.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    assert all(c > r for c, r in zip(chosen, rejected))


def scorer(tiny_checkpoint):
    torch.manual_seed(0)
    value_model = init_value_model(str(tiny_checkpoint))
    torch.nn.init.normal_(value_model.head.weight)  # a head that tells completions apart
    tok = load_tokenizer(str(tiny_checkpoint))
    return RewardModel(value_model, tok, PromptTemplate(TemplateConfig(), tok))


def test_score_is_the_head_at_the_completions_last_token(tiny_checkpoint):
    model = scorer(tiny_checkpoint)
    prompts, completions = ["1+1", "12+30"], ["<answer>2</answer>", "<think>12+30=42</think> <answer>42</answer>"]
    scores = model.score(prompts, completions)
    assert scores != pytest.approx(model.score(prompts, ["<answer>3</answer>", completions[1][:-1]]))
    texts = [split_response(model.template, p, c) for p, c in zip(prompts, completions)]
    for (prompt_ids, completion_ids), score in zip(encode_texts(model.tokenizer, *zip(*texts)), scores):
        # by hand, one unpadded sequence: the hidden state at the completion's last token (EOS is not read)
        ids = torch.tensor([prompt_ids + completion_ids[:-1]])
        with torch.no_grad():
            hidden = model.value_model.backbone(input_ids=ids).last_hidden_state[0, -1]
            assert score == pytest.approx(model.value_model.head(hidden).item(), abs=1e-5)
    # batched with padding = one by one
    assert scores == pytest.approx([model.score([p], [c])[0] for p, c in zip(prompts, completions)], abs=1e-5)


def test_save_load_round_trip_scores_identically(tmp_path, tiny_checkpoint):
    model = scorer(tiny_checkpoint)
    prompts, completions = ["1+1", "2+5", "9+9"], ["<answer>2</answer>", "seven", "<think>18</think>"]
    before = model.score(prompts, completions)
    save_reward_model(model.value_model, model.tokenizer, model.template.cfg, tmp_path / "rm")
    assert load_reward_model(tmp_path / "rm").score(prompts, completions) == before
    reward = make_reward_model_reward(tmp_path / "rm", device="cpu")
    # one completion per call: no padding, so equal up to float rounding
    assert [reward(c, {"prompt": p, "answer": "x"}) for p, c in zip(prompts, completions)] == pytest.approx(before)
    with pytest.raises(FileNotFoundError, match="no reward model"):
        load_reward_model(tiny_checkpoint)


def test_sequence_scores_reads_the_eos_column(tiny_checkpoint):
    model = scorer(tiny_checkpoint)
    tok = model.tokenizer
    eos = tok.eos_token_id
    batch_scores = sequence_scores(model.value_model, [[5, 6], [7]], [[8, 9, eos], [eos]], tok.pad_token_id, "cpu")
    values = model.value_model.values(make_batch([[5, 6], [7]], [[8, 9, eos], [eos]], tok.pad_token_id))
    assert batch_scores.tolist() == pytest.approx([values[0, 2].item(), values[1, 0].item()])


def test_bad_rows_name_file_line_and_field(tmp_path, tiny_checkpoint):
    pairs = toy_pairs(2)
    path = write_jsonl(tmp_path / "pairs.jsonl", [pairs[0], {"prompt": "hi", "chosen": "hello"}])
    with pytest.raises(DataFileError, match=r"pairs\.jsonl:2: row has no 'rejected' field"):
        run_recipe(rm_recipe(tmp_path, tiny_checkpoint, path), quiet=True)
