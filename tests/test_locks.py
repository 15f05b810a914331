"""Locks between r1lab processes (r1lab.locks): one process per run folder, one builder per cached base model, and
cached base models verified before they are reused (r1lab.train.pretrain)."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from r1lab.config import to_dict
from r1lab.locks import RunFolderInUse, run_folder_lock, wait_for_lock
from r1lab.pipeline import load_recipe, run_recipe
from r1lab.tasks import get_task
from r1lab.templates import PromptTemplate, TemplateConfig
from r1lab.train.pretrain import MANIFEST, PretrainConfig, cache_key, model_folder_damage, pretrain
from tests.test_cli import ROOT, grpo_recipe

TINY_BASE = {"steps": 3, "corpus_problems": 64, "batch_size": 4, "hidden_size": 32, "num_layers": 1,
             "intermediate_size": 64, "num_heads": 2, "eval": False}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_second_run_on_the_same_folder_stops_at_once_naming_the_folder_and_the_other_process(tmp_path,
                                                                                               tiny_checkpoint):
    path = grpo_recipe(tmp_path, tiny_checkpoint)
    run_dir = tmp_path / "runs" / "bad"
    with run_folder_lock(run_dir):
        started = time.time()
        result = subprocess.run([sys.executable, "-m", "r1lab", "run", str(path)], capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"run folder {run_dir} is in use by process {os.getpid()} on " in result.stderr
        assert "wait for it to end, or give this run another folder" in result.stderr
        assert time.time() - started < 60  # no waiting: the process only starts python and reads the recipe
        assert not (run_dir / "grpo").exists()  # nothing ran
        with pytest.raises(RunFolderInUse, match=str(run_dir)):  # in-process too
            run_recipe(path, quiet=True)
    run_dir_after = run_recipe(path, quiet=True)  # released: the run goes ahead
    assert (run_dir_after / "grpo" / "done.json").is_file()


def test_an_unknown_holder_is_said_to_be_another_process(tmp_path):
    with run_folder_lock(tmp_path):
        (tmp_path / ".r1lab.lock.json").unlink()
        with pytest.raises(RunFolderInUse, match="is in use by another process"):
            with run_folder_lock(tmp_path):
                pass


def test_wait_for_lock_waits_and_says_so_once(tmp_path):
    lock = tmp_path / "sub" / "key.lock"
    said = []
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"from filelock import FileLock; import time\n"
                               f"with FileLock({str(lock)!r}):\n    print('held', flush=True); time.sleep(1.5)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    started = time.time()
    with wait_for_lock(lock, on_wait=lambda: said.append("waiting")):
        waited = time.time() - started
    holder.wait(timeout=30)
    assert said == ["waiting"] and waited > 0.5
    with wait_for_lock(lock, on_wait=lambda: said.append("again")):
        pass
    assert said == ["waiting"]  # free: no wait, nothing said


def _pretrain_recipe(tmp_path: Path, name: str, cache: Path) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "output_dir": str(tmp_path / "runs"), "threads": 1,
                                    "task": {"name": "arithmetic", "options": {"digits": 2}},
                                    "stages": {"base": {"kind": "pretrain", "cache_dir": str(cache), **TINY_BASE}}}))
    return path


def _lock_path(recipe: Path) -> Path:
    run, stages = load_recipe(recipe)
    cfg = stages["base"]
    key = cache_key(cfg, to_dict(run.task), to_dict(run.template), run.seed)
    return Path(cfg.cache_dir) / "tiny-base" / f"{key}.lock"


def test_runs_sharing_a_base_model_build_it_once_and_never_touch_each_others_temporary_folders(tmp_path):
    """Seen side by side before the lock: two recipes sharing a base failed 3 times in 4 with 'No such file or
    directory: <cache>/tiny-base/.<key>.tmp-<pid>' (each build's start removed the other's temporary folder)."""
    cache = tmp_path / "cache"
    recipes = [_pretrain_recipe(tmp_path, name, cache) for name in ("first", "second")]
    with wait_for_lock(_lock_path(recipes[0])):  # both runs reach the cache while it is locked: they must wait
        processes = [subprocess.Popen([sys.executable, "-m", "r1lab", "run", str(path)], cwd=ROOT, text=True,
                                      stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
                     for path in recipes]
        for process in processes:
            for line in process.stderr:
                if "waiting for another process that is building the same base model" in line:
                    break
            else:
                pytest.fail("a run did not wait for the lock")
    for process in processes:
        process.communicate(timeout=300)
        assert process.returncode == 0
    metrics = [tmp_path / "runs" / name / "metrics.jsonl" for name in ("first", "second")]
    built = [path for path in metrics if path.is_file() and '"loss"' in path.read_text()]
    assert len(built) == 1  # one built it, the other reused it
    models = [tmp_path / "runs" / name / "base" / "model" / "model.safetensors" for name in ("first", "second")]
    assert sha256(models[0]) == sha256(models[1])
    entries = list((cache / "tiny-base").iterdir())
    assert sorted(p.suffix for p in entries) == ["", ".lock"]  # the entry and its lock, no temporary folder left
    assert model_folder_damage(next(p for p in entries if p.suffix == "")) is None


def test_a_damaged_or_unverifiable_cache_entry_is_built_again_with_a_warning(tmp_path):
    cfg = PretrainConfig(cache_dir=str(tmp_path / "cache"), **TINY_BASE)
    task = get_task("arithmetic", digits=2)
    template = PromptTemplate(TemplateConfig())
    kwargs = dict(task=task, task_spec={"name": "arithmetic"}, template=template, template_spec={}, seed=0)
    warnings = []
    entry = pretrain(cfg, **kwargs, warn=warnings.append)
    weights = entry / "model.safetensors"
    reference = sha256(weights)
    assert warnings == [] and model_folder_damage(entry) is None

    notes = []
    assert pretrain(cfg, **kwargs, warn=warnings.append, note=notes.append) == entry and warnings == []  # reused
    assert notes == [f"the tiny base model from the cache, {entry} (built before with the same settings; cache: "
                     f"false, or deleting it, builds it again)"]  # said: the minutes of pretraining are skipped

    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "has a damaged model.safetensors" in model_folder_damage(entry)
    pretrain(cfg, **kwargs, warn=warnings.append)
    assert len(warnings) == 1 and f"the cached base model {entry} has a damaged model.safetensors" in warnings[0]
    assert sha256(weights) == reference  # built again, the same bytes

    (entry / MANIFEST).unlink()  # an entry of an r1lab that wrote no manifest cannot be verified
    pretrain(cfg, **kwargs, warn=warnings.append)
    assert "cannot be verified" in warnings[-1] and model_folder_damage(entry) is None

    copy = pretrain(cfg, **kwargs, warn=warnings.append, copy_to=tmp_path / "run" / "base" / "model")
    assert copy == tmp_path / "run" / "base" / "model" and sha256(copy / "model.safetensors") == reference
