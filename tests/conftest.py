import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
