"""SFT trainer: loss on completion tokens only, length bucketing changes nothing but speed, it learns, bad rows are
reported by file:line, it runs (and resumes) as a pipeline stage."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from r1lab.console import Console
from r1lab.data.jsonl import DataFileError, read_sft_examples
from r1lab.encoding import encode_sft_examples, split_response
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.losses import sft_loss
from r1lab.models import EOS, R1_ZERO_PREFIX, R1_ZERO_SUFFIX, load_model, load_tokenizer
from r1lab.pipeline import run_recipe
from r1lab.recipe import RunConfig
from r1lab.stage import RunOutputs, Stage
from r1lab.supervised import micro_batches
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.train.sft import SFTConfig, sft_step_loss, train

COMPLETION = "<think>7+1=8</think> <answer>8</answer>"


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def stage_context(tmp_path, model, name="sft"):
    run = RunConfig(name="t", output_dir=str(tmp_path), model=str(model), device="cpu")
    stage_dir = tmp_path / "t" / name
    stage_dir.mkdir(parents=True)
    return Stage(name=name, run=run, task=None, init=str(model), outputs=RunOutputs(tmp_path / "t", str(model)),
                 folder=stage_dir, device=torch.device("cpu"), console=Console(quiet=True))


def toy_rows(n):
    return [{"prompt": f"{i}+{i % 3}", "completion": f"<think>{i}+{i % 3}={i + i % 3}</think> "
                                                     f"<answer>{i + i % 3}</answer>" + "!" * (i % 4)}
            for i in range(n)]


def test_loss_counts_completion_tokens_only(tiny_checkpoint):
    model, tok = load_model(str(tiny_checkpoint))
    template = PromptTemplate(TemplateConfig(), tok)
    [(prompt, completion)] = encode_sft_examples(tok, template, [{"prompt": "7+1", "completion": COMPLETION}])
    assert completion[-1] == tok.eos_token_id  # the model learns to stop
    loss = sft_step_loss(model, [(prompt, completion)], tok.pad_token_id, 0)["loss"]

    # the same number from the logprobs: sft_loss over the completion mask
    batch = make_batch([prompt], [completion], tok.pad_token_id)
    assert batch.completion_mask.sum().item() == len(completion)
    assert loss == pytest.approx(sft_loss(completion_logprobs(model, batch)[0], batch.completion_mask).item(), abs=1e-6)

    # an independent check: Hugging Face's own loss with the prompt positions labelled -100 (ignored)
    ids = torch.tensor([prompt + completion])
    labels = ids.clone()
    labels[0, :len(prompt)] = -100
    with torch.no_grad():
        assert loss == pytest.approx(model(input_ids=ids, labels=labels).loss.item(), abs=1e-5)
        # counting a single prompt token gives another number: the prompt is really left out
        labels[0, len(prompt) - 1] = ids[0, len(prompt) - 1]
        assert abs(model(input_ids=ids, labels=labels).loss.item() - loss) > 1e-4


def test_split_response_puts_the_boundary_where_generation_does(tiny_checkpoint):
    tok = load_tokenizer(str(tiny_checkpoint))
    r1 = PromptTemplate(TemplateConfig(), tok)
    prompt_text = R1_ZERO_PREFIX + "1+1" + R1_ZERO_SUFFIX
    # the space after "Assistant:" belongs to the completion, as in the corpus and in generation
    assert split_response(r1, "1+1", "<think>x</think>") == (prompt_text, " <think>x</think>")
    assert split_response(r1, "1+1", " <think>x</think>") == (prompt_text, " <think>x</think>")
    prefill = PromptTemplate(TemplateConfig(prefill_think=True), tok)
    assert split_response(prefill, "1+1", "<think>x</think>") == (prompt_text + " <think>", "x</think>")
    assert split_response(prefill, "1+1", "x</think>") == (prompt_text + " <think>", "x</think>")
    plain = PromptTemplate(TemplateConfig(kind="plain"), tok)
    assert split_response(plain, "1+1", "<think>x</think>") == ("1+1", "<think>x</think>")


def test_chat_rows_learn_the_last_assistant_turn(tiny_checkpoint, tmp_path):
    tok = load_tokenizer(str(tiny_checkpoint))
    tok.chat_template = ("{% for m in messages %}[{{ m.role }}]{{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]{% endif %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                {"role": "user", "content": "2+2"}, {"role": "assistant", "content": "<answer>4</answer>"}]
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": messages}])
    rows = read_sft_examples(path, chat=True)
    template = PromptTemplate(TemplateConfig(kind="chat"), tok)
    [(prompt, completion)] = encode_sft_examples(tok, template, rows)
    assert tok.decode(prompt) == "[user]hi\n[assistant]yo\n[user]2+2\n[assistant]"
    assert tok.decode(completion) == "<answer>4</answer>" + EOS
    with pytest.raises(DataFileError, match=r"chat\.jsonl:1: 'messages' rows need template.kind: chat"):
        read_sft_examples(path, chat=False)


def test_bucketing_gives_the_loss_and_gradient_of_one_batch(tiny_checkpoint):
    model, tok = load_model(str(tiny_checkpoint))
    examples = encode_sft_examples(tok, PromptTemplate(TemplateConfig(kind="plain"), tok), toy_rows(7))
    lengths = [(len(p), len(c)) for p, c in examples]
    results = {}
    for budget in (0, 1, 70):  # one batch, one example per micro-batch, length buckets
        model.zero_grad()
        stats = sft_step_loss(model, examples, tok.pad_token_id, budget, backward=True)
        results[budget] = (stats, [p.grad.clone() for p in model.parameters()])
    groups = micro_batches(lengths, 70)
    assert 1 < len(groups) < len(examples) and sorted(i for g in groups for i in g) == list(range(7))
    for g in groups:
        assert len(g) * (max(lengths[i][0] for i in g) + max(lengths[i][1] for i in g)) <= 70
    assert results[70][0]["padding_frac"] < results[0][0]["padding_frac"]
    assert results[1][0]["padding_frac"] == 0.0
    for budget in (1, 70):
        assert results[budget][0]["loss"] == pytest.approx(results[0][0]["loss"], abs=1e-6)
        for a, b in zip(results[budget][1], results[0][1]):
            assert torch.allclose(a, b, atol=1e-6)


def test_bad_rows_name_file_line_and_field(tmp_path, tiny_checkpoint):
    good = {"prompt": "1+1", "completion": "2"}
    path = write_jsonl(tmp_path / "data.jsonl", [good, {"prompt": "2+2", "answer": "4"}])
    with pytest.raises(DataFileError, match=r"data\.jsonl:2: row has no 'completion' field \(keys: answer, prompt\)"):
        read_sft_examples(path)
    path.write_text(json.dumps(good) + "\n\n{not json\n")
    with pytest.raises(DataFileError, match=r"data\.jsonl:3: not valid JSON"):
        read_sft_examples(path)
    write_jsonl(path, [good, {"prompt": "x", "completion": 5}])
    with pytest.raises(DataFileError, match=r"data\.jsonl:2: 'completion' must be a string, got int"):
        read_sft_examples(path)
    # through the trainer: the error comes before any model is loaded
    ctx = stage_context(tmp_path, tiny_checkpoint)
    with pytest.raises(DataFileError, match=r"data\.jsonl:2"):
        train(SFTConfig(data=str(path)), ctx)
    with pytest.raises(DataFileError, match="data file not found"):
        train(SFTConfig(data=str(tmp_path / "missing.jsonl")), ctx)


def test_data_can_name_an_earlier_stage(tmp_path):
    data = write_jsonl(tmp_path / "kept.jsonl", toy_rows(2))
    for name, entry in {"sampler": {"kind": "rejection_sampling", "model": None, "data_file": str(data)},
                        "old": {"kind": "rejection_sampling", "checkpoint": str(data)},  # done.json before the split
                        "rl": {"kind": "grpo", "model": str(tmp_path / "rl"), "data_file": None}}.items():
        (tmp_path / "run" / name).mkdir(parents=True)
        (tmp_path / "run" / name / "done.json").write_text(json.dumps({"stage": name, **entry}))
    outputs = RunOutputs(tmp_path / "run", "base")
    assert outputs.data("sampler") == outputs.data("old") == outputs.data(str(data)) == str(data)
    with pytest.raises(DataFileError, match="stage 'sft': data file not found: 'nope'"):
        outputs.data("nope", stage="sft")
    with pytest.raises(DataFileError, match="stage 'rl' produced .* which is not a data file"):
        outputs.data("rl")


def test_sft_learns_to_reproduce_a_completion(tmp_path, tiny_checkpoint):
    from r1lab.engine import SamplingParams
    from r1lab.generation import Generator

    path = write_jsonl(tmp_path / "one.jsonl", [{"prompt": "7+1", "completion": COMPLETION}] * 4)
    ctx = stage_context(tmp_path, tiny_checkpoint)
    output = train(SFTConfig(data=str(path), epochs=40, batch_size=4, lr=1e-2, warmup_ratio=0.0, eval_fraction=0.0,
                            save_every=0, eval=False), ctx)
    model, tok = load_model(output.model)
    template = PromptTemplate(TemplateConfig(), tok)
    [[generation]] = Generator("transformers", model, tok).generate(
        [template.render("7+1")], 1, SamplingParams(temperature=0.0, max_new_tokens=40))
    assert generation.text == " " + COMPLETION and not generation.truncated
    metrics = [json.loads(line) for line in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert len(losses) == 40 and losses[-1] < 0.1 * losses[0]
    assert metrics[-1]["lr"] == pytest.approx(1e-3)  # cosine down to lr × min_lr_ratio at the last step


def sft_recipe(tmp_path, model, name, data, **stage):
    spec = {"name": name, "output_dir": str(tmp_path / "runs"), "model": str(model),
            "task": {"name": "arithmetic", "options": {"digits": 1}},
            "eval": {"num_problems": 2, "k": 1, "max_new_tokens": 8},
            "stages": {"sft": {"kind": "sft", "data": str(data), "batch_size": 2, "lr": 1e-3,
                               "eval_fraction": 0.3, "eval": False, **stage}}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_pipeline_runs_an_sft_stage(tmp_path, tiny_checkpoint):
    data = write_jsonl(tmp_path / "sft.jsonl", toy_rows(12))
    run_dir = run_recipe(sft_recipe(tmp_path, tiny_checkpoint, "smoke", data, max_steps=2, eval=True), quiet=True)
    [entry] = json.loads((run_dir / "summary.json").read_text())["stages"]
    assert entry["kind"] == "sft" and entry["model"] == str(run_dir / "sft" / "final") and entry["data_file"] is None
    assert 0.0 <= entry["eval"]["pass@1"] <= 1.0
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["data/eval_examples"] > 0 and metrics[0]["data/train_examples"] > 0
    steps = [m for m in metrics if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2] and "eval/loss" in steps[-1]


def test_killed_sft_run_resumes_to_the_same_weights(tmp_path, tiny_checkpoint, monkeypatch):
    data = write_jsonl(tmp_path / "sft.jsonl", toy_rows(12))
    run_recipe(sft_recipe(tmp_path, tiny_checkpoint, "straight", data, max_steps=4, save_every=1), quiet=True)

    log_metrics = Stage.log_metrics

    def killed_at_step_3(self, step, metrics):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")
        log_metrics(self, step, metrics)

    monkeypatch.setattr(Stage, "log_metrics", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(sft_recipe(tmp_path, tiny_checkpoint, "killed", data, max_steps=4, save_every=1), quiet=True)
    state = tmp_path / "runs" / "killed" / "sft" / "checkpoint" / "trainer_state.pt"
    assert torch.load(state, weights_only=False)["step"] == 2
    monkeypatch.setattr(Stage, "log_metrics", log_metrics)
    run_recipe(sft_recipe(tmp_path, tiny_checkpoint, "killed", data, max_steps=4, save_every=1), quiet=True)
    straight = load_file(tmp_path / "runs" / "straight" / "sft" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "runs" / "killed" / "sft" / "final" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
