"""Inputs a user gets wrong, and the message each one gets: a full disk while saving, a character the tiny model does
not know, a run folder given as a model, data that is not UTF-8, a CSV with a stray quote, a prompt longer than the
model's context, an ``--samples`` path that cannot be written, a folder that is no run given to ``r1lab report``, and
a corrupted summary.json."""

import errno
import json
import logging
import os
import shutil
from collections import namedtuple

import pytest
import torch

from r1lab import checkpoint, cli, commands
from r1lab.checkpoint import (DiskFullError, atomic_dir, atomic_write_text, is_disk_full, save_training_state)
from r1lab.data.jsonl import read_sft_examples
from r1lab.encoding import context_length, encode_sft_examples, warn_if_prompts_exceed_context
from r1lab.jsonl_files import DataFileError, read_jsonl
from r1lab.models import (NotAModelError, UnknownCharactersError, build_tiny_model, build_tiny_tokenizer,
                          load_model, load_tokenizer, save_model)
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate, TemplateConfig

TORCH_DISK_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
SAFETENSORS_DISK_FULL = ('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                         'left on device" })')


@pytest.fixture
def five_mib_free(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(100 * 2**20, 95 * 2**20, 5 * 2**20))


# --- a full disk while saving ---


def test_torch_save_that_runs_out_of_space_says_the_disk_is_full(tmp_path, monkeypatch, five_mib_free):
    def full(state, path):
        path.write_bytes(b"PK partial")  # what torch's writer leaves when the disk fills up
        raise RuntimeError(TORCH_DISK_FULL)

    monkeypatch.setattr(checkpoint.torch, "save", full)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(DiskFullError) as caught:
        save_training_state(tmp_path, optimizer=optimizer, scheduler=None, step=3)
    message = str(caught.value)
    assert message.startswith(f"the disk is full: could not write {tmp_path / 'trainer_state.pt'} (5.0 MiB free on "
                              f"the disk holding {tmp_path})")
    assert message.endswith(f"then run the same command again to resume. The writer said: {TORCH_DISK_FULL}")
    assert caught.value.errno == errno.ENOSPC and isinstance(caught.value, OSError)
    assert not (tmp_path / "trainer_state.pt").exists()  # the partial file does not hold on to the space


def test_checkpoint_folder_that_runs_out_of_space_keeps_the_previous_one(tmp_path, five_mib_free):
    folder = tmp_path / "grpo" / "checkpoint"
    with atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("step 10")
    with pytest.raises(DiskFullError) as caught:
        with atomic_dir(folder) as tmp:
            (tmp / "weights").write_text("half of step 20")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(caught.value).startswith(
        f"the disk is full: could not save {folder} (5.0 MiB free on the disk holding {folder.parent}); the previous "
        f"checkpoint in {folder} is intact. Free some space")
    assert (folder / "weights").read_text() == "step 10"
    assert sorted(p.name for p in folder.parent.iterdir()) == ["checkpoint"]  # the partial copy is gone


def test_first_checkpoint_that_runs_out_of_space_says_nothing_was_written(tmp_path, five_mib_free):
    folder = tmp_path / "checkpoint"
    with pytest.raises(DiskFullError, match=f"nothing was written to {folder} \\(there was no previous checkpoint\\)"):
        with atomic_dir(folder):
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert not folder.exists()


def test_save_model_that_runs_out_of_space_names_the_model_folder(tmp_path, monkeypatch, five_mib_free):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    final = tmp_path / "final"
    save_model(model, tokenizer, final)

    def full(*args, **kwargs):
        raise Exception(SAFETENSORS_DISK_FULL)  # safetensors' SafetensorError is a plain Exception

    monkeypatch.setattr(model, "save_pretrained", full)
    with pytest.raises(DiskFullError) as caught:
        save_model(model, tokenizer, final)
    assert str(caught.value).startswith(f"the disk is full: could not save {final} (5.0 MiB free")
    assert f"the previous checkpoint in {final} is intact" in str(caught.value)
    assert str(caught.value).endswith(f"The writer said: {SAFETENSORS_DISK_FULL}")
    load_model(str(final))  # still loads


def test_other_failures_while_saving_stay_what_they_are(tmp_path):
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C, even during a write that failed for lack of space
        with atomic_dir(tmp_path / "a"):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:
                raise KeyboardInterrupt
    with pytest.raises(ValueError, match="^a bug$"):
        with atomic_dir(tmp_path / "b"):
            raise ValueError("a bug")
    assert not is_disk_full(PermissionError(errno.EACCES, "Permission denied"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))


def test_summary_write_that_runs_out_of_space_keeps_the_previous_file(tmp_path, monkeypatch, five_mib_free):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.Path, "write_text", full)
    with pytest.raises(DiskFullError, match="could not write .*summary.json .*; the previous summary.json is intact"):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_cli_reports_a_full_disk_in_one_line(monkeypatch, capsys, tmp_path):
    def full(*args, **kwargs):
        raise checkpoint.disk_full_error(tmp_path / "checkpoint", OSError(errno.ENOSPC, "No space left on device"))

    monkeypatch.setattr(commands, "run_recipe", full)
    recipe = tmp_path / "recipe.yaml"  # a valid recipe: the command line checks it before anything runs
    recipe.write_text(f"name: t\noutput_dir: {tmp_path / 'runs'}\nstages:\n  base:\n    kind: pretrain\n")
    assert cli.main(["run", str(recipe)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"r1lab: error: the disk is full: could not write {tmp_path / 'checkpoint'}")
    assert "Traceback" not in err


# --- a character the tiny model does not know ---


def test_prompt_with_a_character_the_tiny_model_does_not_know():
    template = PromptTemplate(TemplateConfig(), build_tiny_tokenizer())
    with pytest.raises(UnknownCharactersError) as caught:
        template.render("Combien font 2+2 ? Réponds → vite")
    assert str(caught.value) == (
        "the prompt has characters the tiny model's tokenizer does not know: 'é' (U+00E9), '→' (U+2192) (in "
        "'Combien font 2+2 ? Réponds → vite'). The tiny model only knows printable ASCII and newline: write the data "
        "in ASCII, or train a real model (set model: to a Hugging Face id)")
    assert template.render("2+2\nok").endswith("2+2\nok. Assistant:")  # ASCII and newline are fine


def test_sft_row_with_an_unknown_character_names_its_file_and_line(tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "1+1", "completion": "2"}\n{"prompt": "2+2", "completion": "vier – 4"}\n')
    tokenizer = build_tiny_tokenizer()
    with pytest.raises(UnknownCharactersError, match=f"^{data}:2: the completion has characters the tiny model's "
                                                     f"tokenizer does not know: '–' \\(U\\+2013\\)"):
        encode_sft_examples(tokenizer, PromptTemplate(TemplateConfig(), tokenizer), read_sft_examples(data))


def test_eval_of_a_dataset_with_an_unknown_character_is_one_line(tmp_path, tiny_checkpoint, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Wie viel ist 2·2?", "answer": "4"}) + "\n")
    code = cli.main(["eval", "--model", str(tiny_checkpoint), "--task", "dataset", "--task-option", f"path={data}",
                     "--task-option", f"test_path={data}", "--num-problems", "1", "--k", "1",
                     "--max-new-tokens", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2
    assert "r1lab: error: the prompt has characters the tiny model's tokenizer does not know: '·' (U+00B7)" in err
    assert "only knows printable ASCII and newline" in err and "Traceback" not in err


# --- a run or empty folder given as a model ---


def test_run_folder_given_as_a_model_names_the_models_inside(tmp_path, tiny_checkpoint):
    run = tmp_path / "runs" / "tiny"
    (run / "sft").mkdir(parents=True)
    shutil.copytree(tiny_checkpoint, run / "grpo" / "final")
    (run / "summary.json").write_text("{}")
    with pytest.raises(NotAModelError) as caught:
        load_model(str(run))
    assert str(caught.value) == (f"{run} is a run folder (it has summary.json), not a model; give one of its models "
                                 f"instead: {run / 'grpo' / 'final'}")
    with pytest.raises(NotAModelError) as stage:
        load_tokenizer(str(run / "sft"))  # a stage folder with no model yet: nothing in it
    assert str(stage.value) == (f"{run / 'sft'} is an empty folder, not a model; give a model folder instead: "
                                f"<run>/<stage>/final (it holds config.json and the weights)")
    with pytest.raises(NotAModelError, match=f"^{run / 'grpo'} is a stage folder \\(it has final\\), not a model; "
                                             f"give one of its models instead: {run / 'grpo' / 'final'}$"):
        load_model(str(run / "grpo"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(NotAModelError, match="has no config.json, so it is not a Hugging Face model \\(it holds: "
                                             "a.txt\\)"):
        load_model(str(tmp_path / "notes"))


# --- data that is not UTF-8, and CSV quotes ---


def test_jsonl_line_that_is_not_utf8_names_file_line_and_byte(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'{"prompt": "1+1", "answer": "2"}\n{"prompt": "caf\xe9", "answer": "3"}\n')
    message = (f"{data}:2: not UTF-8 text (byte 0xe9 at position 16 of the line); save the file as UTF-8 (e.g. iconv "
               f"-f latin1 -t utf-8)")
    with pytest.raises(DataFileError) as caught:
        read_jsonl(data)
    assert str(caught.value) == message
    with pytest.raises(DataFileError, match=f"^{data}:2: not UTF-8"):
        read_sft_examples(data)
    with pytest.raises(DataFileError, match=f"^{data}:2: not UTF-8"):
        get_task("jsonl", train_path=str(data))
    with pytest.raises(DataFileError, match=f"^{data}:2: not UTF-8"):
        get_task("dataset", path=str(data))


def test_a_utf8_byte_order_mark_is_no_error(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"prompt": "1+1", "answer": "2"}\n')
    assert read_jsonl(data) == [(f"{data}:1", {"prompt": "1+1", "answer": "2"})]


def test_json_array_that_is_not_utf8_or_not_json_names_the_line(tmp_path):
    data = tmp_path / "rows.json"
    data.write_bytes(b'[\n{"prompt": "1+1", "answer": "2"},\n{"prompt": "\xff", "answer": "3"}\n]\n')
    with pytest.raises(DataFileError, match=f"^{data}:3: not UTF-8 text \\(byte 0xff"):
        get_task("dataset", path=str(data))
    data.write_text('[\n{"prompt": "1+1", "answer": "2"},\n{"prompt": "2+2" "answer": "4"}\n]\n')
    with pytest.raises(DataFileError, match=f"^{data}:3: not valid JSON \\(Expecting ',' delimiter"):
        get_task("dataset", path=str(data))


@pytest.mark.parametrize("text, line, row, reason", [
    ('prompt,answer\n"1+1",2\n"2+2"x,4\n3+3,6\n', 3, "row 2", "a quote in the middle of a field"),
    ('prompt,answer\n"1+1",2\n\n"a\nb",5\n"2+2,4\n3+3,6\n', 6, "row 3", "a quoted field is never closed"),
    ('prompt,"answer\n1+1,2\n', 1, "the header", "a quoted field is never closed"),
])
def test_csv_with_a_stray_quote_names_file_line_and_row(tmp_path, text, line, row, reason):
    data = tmp_path / "rows.csv"
    data.write_text(text)
    with pytest.raises(DataFileError) as caught:
        get_task("dataset", path=str(data))
    assert str(caught.value) == (f"{data}:{line}: {row}: {reason}; in CSV a field with a quote must be quoted whole, "
                                 f'with every quote inside it doubled: "say ""hi"""')


def test_csv_that_is_not_utf8_names_file_and_line(tmp_path):
    data = tmp_path / "rows.csv"
    data.write_bytes(b"prompt,answer\n1+1,2\n2\xe9,4\n")
    with pytest.raises(DataFileError, match=f"^{data}:3: not UTF-8 text \\(byte 0xe9 at position 2 of the line\\)"):
        get_task("dataset", path=str(data))


def test_csv_with_quotes_done_right_loads_without_a_progress_bar(tmp_path, capfd):
    datasets = pytest.importorskip("datasets")
    data = tmp_path / "rows.csv"
    data.write_text('prompt,answer\n"Say ""hi"", then 1+1",2\n"two\nlines: 2+2",4\n')
    task = get_task("dataset", path=str(data), test_path=str(data))
    assert [e["prompt"] for e in task.examples("train", 0)] == ['Say "hi", then 1+1', "two\nlines: 2+2"]
    # datasets' "Generating train split" bar stays out of r1lab's output, and is on again for the caller after
    assert "Generating" not in capfd.readouterr().err and not datasets.are_progress_bars_disabled()


# --- a prompt longer than the model's context ---


def test_prompt_longer_than_the_context_warns_once(caplog):
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                             max_positions=64)
    limit = context_length(model)
    assert limit == 64
    with caplog.at_level(logging.WARNING, logger="r1lab"):
        assert warn_if_prompts_exceed_context(tokenizer, limit, ["1+1=?", "x" * 50], max_new_tokens=8) is None
        message = warn_if_prompts_exceed_context(tokenizer, limit, ["1+1=?", "x" * 70, "y" * 80], max_new_tokens=8)
        assert message.startswith("a prompt of 80 tokens is longer than the model's context "
                                  "(max_position_embeddings=64)")
        assert warn_if_prompts_exceed_context(tokenizer, limit, ["z" * 100]) is None  # once
    assert [r.getMessage() for r in caplog.records] == [message]


def test_prompt_that_leaves_no_room_for_the_completion_warns():
    tokenizer = build_tiny_tokenizer()
    message = warn_if_prompts_exceed_context(tokenizer, 100, ["x" * 90], max_new_tokens=16)
    assert message.startswith("a prompt of 90 tokens plus max_new_tokens=16 does not fit the model's context "
                              "(max_position_embeddings=100)")
    assert warn_if_prompts_exceed_context(tokenizer, None, ["x" * 900]) is None  # context unknown: no check


# --- the CLI: eval --samples, report ---


def test_eval_samples_path_that_cannot_be_written_fails_before_the_model_loads(tmp_path, monkeypatch, capsys):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before --samples was checked")

    monkeypatch.setattr(commands, "load_model", must_not_load)
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    assert cli.main(["eval", "--model", "tiny", "--samples", str(blocker / "out" / "samples.jsonl")]) == 2
    assert capsys.readouterr().err == (f"r1lab: error: --samples {blocker / 'out' / 'samples.jsonl'}: cannot write "
                                       f"there, {blocker} is a file, not a folder\n")
    assert cli.main(["eval", "--model", "tiny", "--samples", str(tmp_path)]) == 2
    assert f"--samples {tmp_path}: is a folder; give a file name" in capsys.readouterr().err


def test_eval_samples_path_check_leaves_no_file_behind(tmp_path):
    target = tmp_path / "new" / "samples.jsonl"
    commands.check_writable_file(target, "--samples")
    assert target.parent.is_dir() and list(target.parent.iterdir()) == []


def test_report_on_a_folder_that_is_not_a_run_fails(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert cli.main(["report", str(tmp_path / "photos")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"r1lab: error: {tmp_path / 'photos'} is not a run folder (a run folder has summary.json, "
                          f"config.yaml, metrics.jsonl")
    assert not (tmp_path / "photos" / "report.html").exists()
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert f"no run folder at {tmp_path / 'missing'}" in capsys.readouterr().err


def test_report_on_a_corrupted_summary_says_which_file_and_how_to_rewrite_it(tmp_path, capsys):
    (tmp_path / "summary.json").write_text('{"run": "x", "stages": [')
    assert cli.main(["report", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "report.html") and (tmp_path / "report.html").is_file()
    assert err.startswith(f"r1lab report: {tmp_path / 'summary.json'} is corrupted (not valid JSON: ")
    assert "running `r1lab run` on the recipe again rewrites it (the stages already done are skipped)" in err


def test_eval_samples_path_in_a_folder_that_refuses_writes(tmp_path, monkeypatch):
    def refuse(self, *args, **kwargs):  # a read-only folder (root in a container writes anywhere, so simulated)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))

    monkeypatch.setattr(commands.Path, "write_text", refuse)
    with pytest.raises(commands.ConfigError) as caught:
        commands.check_writable_file(tmp_path / "samples.jsonl", "--samples")
    assert str(caught.value) == (f"--samples {tmp_path / 'samples.jsonl'}: cannot write in {tmp_path} "
                                 f"(Permission denied); choose a writable path")
