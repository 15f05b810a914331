import os
import tempfile

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Experiment trackers (tests/test_trackers.py) write into a scratch folder, never into the user's home or to the net.
_TRACKER_HOME = tempfile.mkdtemp(prefix="r1lab-test-trackers-")
os.environ["TRACKIO_DIR"] = os.path.join(_TRACKER_HOME, "trackio")  # read once, when trackio is first imported
os.environ["WANDB_MODE"] = "offline"
for _name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
    os.environ[_name] = os.path.join(_TRACKER_HOME, _name.lower())


@pytest.fixture(autouse=True)
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    yield


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """In-process tests use tiny models, for which one thread is faster than two (and robust to a busy machine).
    Recipes run in subprocesses keep their own `threads` setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A tiny random model with the embedded tokenizer, saved once for the tests that need a checkpoint (read-only)."""
    from r1lab.models import build_tiny_model, build_tiny_tokenizer, save_model

    path = tmp_path_factory.mktemp("model") / "tiny"
    tok = build_tiny_tokenizer()
    save_model(build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok, path)
    return path
