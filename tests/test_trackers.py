"""report_to: what a run writes to metrics.jsonl, config.yaml and samples.jsonl reaches TensorBoard, wandb (offline)
and trackio too, read back from each one's own files: TensorBoard's event files, wandb's run log, trackio's store."""

import importlib.util
import json
import struct
from pathlib import Path

import pytest
import yaml

from r1lab.config import ConfigError
from r1lab.pipeline import load_recipe, run_recipe
from r1lab.trackers import Trackers

pytest.importorskip("tensorboard")
pytest.importorskip("wandb")
pytest.importorskip("trackio")

STAGE = {"kind": "grpo", "steps": 2, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 8, "eval_every": 0,
         "save_every": 0, "eval": False, "samples_every": 1, "log_samples": 2}


def _recipe(tmp_path, model, stages=None, **run) -> str:
    path = tmp_path / "tracked.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tracked", "output_dir": str(tmp_path / "runs"), "model": str(model), "threads": 1,
        "task": {"name": "arithmetic", "options": {"digits": 1}}, **run, "stages": stages or {"grpo": STAGE}}))
    return str(path)


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _wandb_records(run_dir: Path) -> list:
    """Every record of the wandb run logs under ``run_dir/wandb``: wandb writes a LevelDB-style log (a 7-byte header,
    then 32 KiB blocks of chunks, each with a 7-byte header: crc32, length, type full/first/middle/last) of
    protobuf ``Record`` messages; the reader is written out here because wandb no longer ships one."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for path in sorted((run_dir / "wandb").glob("*-run-*/run-*.wandb")):
        data, position, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while position + 7 <= len(data):
            if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
                position += 32768 - position % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[position:position + 7])
            chunk, position = data[position + 7:position + 7 + length], position + 7 + length
            pending = chunk if kind in (1, 2) else pending + chunk
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(pending)
                records.append(record)
    return records


def _wandb_history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for record in records if record.WhichOneof("record_type") == "history"]


def test_every_tracker_gets_the_metrics_config_and_samples_and_a_resumed_run_goes_on(tmp_path, tiny_checkpoint):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from trackio.sqlite_storage import SQLiteStorage

    trackers = {"report_to": ["tensorboard", "wandb", "trackio"], "tracker_project": "r1lab-tests"}
    run_dir = run_recipe(_recipe(tmp_path, tiny_checkpoint, **trackers), quiet=True)
    steps = [row for row in _jsonl(run_dir / "metrics.jsonl") if "step_seconds" in row]
    samples = _jsonl(run_dir / "samples.jsonl")
    assert len(steps) == 2 and [row["step"] for row in samples] == [1, 1, 2, 2]

    # TensorBoard: scalars by step, the config as text, the samples as text per step
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    for key in ("loss", "reward/mean", "grad_norm"):
        logged = events.Scalars(f"grpo/{key}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in steps], rel=1e-5, abs=1e-6)
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "name: tracked" in config and "kind: grpo" in config
    texts = events.Tensors("grpo/samples/text_summary")
    assert [t.step for t in texts] == [1, 2]
    assert samples[2]["completion"] in texts[1].tensor_proto.string_val[0].decode()

    # wandb, offline in <run>/wandb: every metric against the stage's own step axis, the recipe as config, a table
    records = _wandb_records(run_dir)
    history = [row for row in _wandb_history(records) if "grpo/loss" in row]
    assert [row["grpo/step"] for row in history] == [1, 2]
    for key in ("loss", "reward/mean", "grad_norm"):
        assert [row[f"grpo/{key}"] for row in history] == pytest.approx([row[key] for row in steps], rel=1e-5)
    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run_record.display_name == "tracked" and run_record.project == "r1lab-tests"
    wandb_config = {item.key: json.loads(item.value_json) for item in run_record.config.update}
    assert wandb_config["name"] == "tracked" and wandb_config["stages"]["grpo"]["group_size"] == 2
    tables = sorted((run_dir / "wandb").glob("*-run-*/files/media/table/grpo/samples_*.table.json"))
    assert len(tables) == 2
    logged_rows = [row for table in tables for row in json.loads(table.read_text())["data"]]
    assert sorted(row[2] for row in logged_rows) == sorted(row["completion"] for row in samples)

    # trackio, in its local store
    trackio_run = json.loads((run_dir / "trackers.json").read_text())["trackio"]
    logs = SQLiteStorage.get_logs("r1lab-tests", "tracked", run_id=trackio_run)
    scalars = [row for row in logs if "grpo/loss" in row]
    assert [row["step"] for row in scalars] == [1, 2]
    assert [row["grpo/loss"] for row in scalars] == pytest.approx([row["loss"] for row in steps], rel=1e-5)
    tables = [row["grpo/samples"] for row in logs if "grpo/samples" in row]
    assert [row["completion"] for table in tables for row in table["_value"]] == [r["completion"] for r in samples]
    trackio_config = SQLiteStorage.get_run_config("r1lab-tests", "tracked", run_id=trackio_run)
    assert trackio_config["stages"]["grpo"]["steps"] == 2

    # The same run again with a stage more: the finished stage is kept and both trackers go on in the same run
    ids = json.loads((run_dir / "trackers.json").read_text())
    more = {"grpo": STAGE, "more": {**STAGE, "steps": 1}}
    run_recipe(_recipe(tmp_path, tiny_checkpoint, stages=more, **trackers), quiet=True)
    assert json.loads((run_dir / "trackers.json").read_text()) == ids
    assert {r.run.run_id for r in _wandb_records(run_dir) if r.WhichOneof("record_type") == "run"} == {ids["wandb"]}
    assert [row["more/step"] for row in _wandb_history(_wandb_records(run_dir)) if "more/loss" in row] == [1]
    logs = SQLiteStorage.get_logs("r1lab-tests", "tracked", run_id=trackio_run)
    assert [row["step"] for row in logs if "grpo/loss" in row] == [1, 2]
    assert [row["step"] for row in logs if "more/loss" in row] == [1]


def test_an_unknown_or_missing_tracker_is_refused_before_anything_runs(tmp_path, tiny_checkpoint, monkeypatch):
    with pytest.raises(ConfigError, match=r"report_to = \[\"mlflow\"\]: 'mlflow' is not a tracker r1lab reports to; "
                                          r"supported: tensorboard, wandb, trackio"):
        load_recipe(_recipe(tmp_path, tiny_checkpoint, report_to=["mlflow"]))
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    with pytest.raises(ConfigError, match=r"wandb is not installed: pip install 'r1lab\[wandb\]'"):
        load_recipe(_recipe(tmp_path, tiny_checkpoint, report_to=["tensorboard", "wandb"]))


def test_wandb_without_a_login_says_how_to_log_or_go_offline(tmp_path, monkeypatch):
    import wandb

    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc holding a key
    (tmp_path / "config.yaml").write_text("name: tracked\n")
    trackers = Trackers(["wandb"], tmp_path, "tracked", "r1lab-tests")
    wandb.teardown()  # wandb keeps the settings of its first run in a process (WANDB_MODE=offline, conftest.py)
    try:
        with pytest.raises(ConfigError, match=r"report_to: \[wandb\]: .*wandb login.*WANDB_MODE=offline"):
            trackers.open()
    finally:
        wandb.teardown()  # the next run reads the environment again
    assert trackers.opened == []
