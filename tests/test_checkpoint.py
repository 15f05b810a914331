"""Atomic folder writes survive a kill at any point: leftovers are cleaned, a half-done replacement is undone."""

import os

from r1lab.checkpoint import atomic_dir, atomic_write_text, load_training_state, recover_dir


def test_a_kill_between_the_two_renames_brings_the_old_version_back(tmp_path):
    target = tmp_path / "checkpoint"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    # the state a kill leaves after `path -> .old` and before `.tmp -> path`: no checkpoint, an old one aside
    os.replace(target, tmp_path / ".checkpoint.old-123")
    (tmp_path / ".checkpoint.tmp-123").mkdir()
    (tmp_path / ".checkpoint.tmp-123" / "weights").write_text("half written")
    assert load_training_state(target) is None  # no trainer state in v1, but the folder is back
    assert (target / "weights").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_leftovers_of_killed_writers_are_removed_and_a_new_write_wins(tmp_path):
    target = tmp_path / "final"
    (tmp_path / ".final.tmp-999").mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
    assert (target / "weights").read_text() == "v2" and sorted(p.name for p in tmp_path.iterdir()) == ["final"]
    (tmp_path / ".done.json.tmp-5").write_text("{")
    atomic_write_text(tmp_path / "done.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.json", "final"]
    recover_dir(tmp_path / "missing" / "x")  # nothing to do, no error


def test_an_exception_inside_leaves_the_old_version(tmp_path):
    target = tmp_path / "c"
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("v1")
    try:
        with atomic_dir(target) as tmp:
            (tmp / "w").write_text("v2")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert (target / "w").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_atomic_folders_follow_the_umask(tmp_path):
    """safetensors writes weights readable by their owner only; a model folder gets the umask's permissions."""
    import os
    import stat

    from r1lab.checkpoint import atomic_dir

    previous = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            os.chmod(tmp / "model.safetensors", 0o600)
            (tmp / "adapter").mkdir(mode=0o700)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "model" / "model.safetensors").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model" / "adapter").stat().st_mode) == 0o755
