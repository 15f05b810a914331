"""fp32 linear layers through oneDNN on a CPU (r1lab.cpu_matmul): the same values and gradients as F.linear, the
choice and its switch, routed policies and the engine's oneDNN-packed decode giving what the MKL path gives."""

import copy

import pytest
import torch
import torch.nn.functional as F
from test_fast_engine import PROMPTS, _ids, _small  # noqa: E402  (tests/ is on sys.path under pytest)

from r1lab import cpu_matmul
from r1lab.engine import FastEngine, SamplingParams, TransformersEngine
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.models import build_tiny_tokenizer
from r1lab.policy import Policy

needs_onednn = pytest.mark.skipif(not cpu_matmul.onednn_available(), reason="this PyTorch has no oneDNN linear")


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN chosen, whatever this machine's measurement says."""
    monkeypatch.setattr(cpu_matmul, "onednn_pays", lambda: True)


@pytest.fixture
def blas(monkeypatch):
    monkeypatch.setattr(cpu_matmul, "onednn_pays", lambda: False)


@needs_onednn
@pytest.mark.parametrize("shape,bias,transposed,out", [((7, 48), True, False, 40), ((3, 5, 48), False, False, 40),
                                                        ((5, 3, 48), True, True, 40), ((3, 5, 48), True, False, 96),
                                                        ((5, 3, 48), False, True, 96)])
def test_linear_gives_f_linear_values_and_gradients(shape, bias, transposed, out):
    """out 40 < in 48 and out 96 > in 48: the weight gradient's two orientations (the narrower factor transposed)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator)
    if transposed:  # a non-contiguous input, as a slice or transpose of hidden states arrives
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    weight = torch.randn(out, 48, generator=generator)
    b = torch.randn(out, generator=generator) if bias else None
    leaves = [t.clone().requires_grad_() for t in (x, weight)] + ([b.clone().requires_grad_()] if bias else [])
    others = [t.clone().requires_grad_() for t in (x, weight)] + ([b.clone().requires_grad_()] if bias else [])
    upstream = torch.randn(*shape[:-1], out, generator=generator)
    ours = cpu_matmul.linear(leaves[0], leaves[1], leaves[2] if bias else None)
    reference = F.linear(others[0], others[1], others[2] if bias else None)
    assert ours.shape == reference.shape
    assert torch.allclose(ours, reference, atol=1e-5)
    (ours * upstream).sum().backward()
    (reference * upstream).sum().backward()
    for a, r in zip(leaves, others):
        assert torch.allclose(a.grad, r.grad, atol=1e-4)


@needs_onednn
def test_anything_but_plain_fp32_on_a_cpu_takes_f_linear():
    x, weight = torch.randn(4, 8), torch.randn(6, 8)
    routed = cpu_matmul.linear(x.requires_grad_(), weight)
    assert "OneDNN" in type(routed.grad_fn.next_functions[0][0]).__name__  # a view of our function's output
    half = cpu_matmul.linear(x.bfloat16(), weight.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), F.linear(x, weight), atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu_matmul.linear(x, weight).dtype == torch.bfloat16  # autocast decides, as for F.linear


@needs_onednn
def test_routing_a_model_keeps_its_state_and_a_copy_uses_its_own_weights(tok, onednn):
    model = _small(tok, "qwen2")
    keys = list(model.state_dict())
    linears = [m for m in model.modules() if type(m) is torch.nn.Linear]
    assert cpu_matmul.route_linear_layers(model) == len(linears) > 0
    assert all(cpu_matmul.is_routed(m) for m in linears)
    assert cpu_matmul.route_linear_layers(model) == 0  # routed once only
    assert list(model.state_dict()) == keys
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.model.layers[0].mlp.down_proj.weight.mul_(2.0)
        ids = torch.tensor([[5, 6, 7, 8]])
        assert not torch.allclose(twin(ids).logits, model(ids).logits)  # the copy multiplies its own weights
        twin.model.layers[0].mlp.down_proj.weight.mul_(0.5)
        assert torch.allclose(twin(ids).logits, model(ids).logits)


def test_nothing_is_routed_where_onednn_does_not_pay_or_the_model_is_not_fp32(tok, monkeypatch):
    model = _small(tok, "qwen2")
    monkeypatch.setattr(cpu_matmul, "onednn_pays", lambda: False)
    assert cpu_matmul.route_linear_layers(model) == 0
    monkeypatch.setattr(cpu_matmul, "onednn_pays", lambda: True)
    assert cpu_matmul.route_linear_layers(model.to(torch.bfloat16)) == 0
    assert not any(cpu_matmul.is_routed(m) for m in model.modules())


def test_the_mode_switch(monkeypatch):
    cpu_matmul.onednn_pays.cache_clear()
    try:
        monkeypatch.setenv(cpu_matmul.MODE_ENV, "blas")
        assert cpu_matmul.onednn_pays() is False
        assert cpu_matmul.choice() == "MKL (R1LAB_CPU_MATMUL=blas)"  # the line a run prints
        cpu_matmul.onednn_pays.cache_clear()
        monkeypatch.setenv(cpu_matmul.MODE_ENV, "onednn")
        assert cpu_matmul.onednn_pays() is cpu_matmul.onednn_available()
        cpu_matmul.onednn_pays.cache_clear()
        monkeypatch.setenv(cpu_matmul.MODE_ENV, "fastest")
        with pytest.raises(ValueError, match="R1LAB_CPU_MATMUL='fastest' is not one of auto, onednn, blas"):
            cpu_matmul.onednn_pays()
    finally:
        cpu_matmul.onednn_pays.cache_clear()


def test_a_onednn_that_fails_on_this_cpu_leaves_mkl(monkeypatch, caplog):
    def broken():
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    monkeypatch.setattr(cpu_matmul, "measure", broken)
    monkeypatch.setenv(cpu_matmul.MODE_ENV, "auto")
    cpu_matmul.onednn_pays.cache_clear()
    try:
        with caplog.at_level("INFO", logger="r1lab"):
            assert cpu_matmul.onednn_pays() is False
        assert "oneDNN failed on this CPU: could not create a primitive" in caplog.text
        assert cpu_matmul.choice() == "MKL (oneDNN failed on this CPU: could not create a primitive)"
    finally:
        cpu_matmul.onednn_pays.cache_clear()


@pytest.mark.parametrize("onednn_share,chosen", [(0.5, "oneDNN"), (0.9, "MKL")])
def test_auto_takes_onednn_where_it_needs_at_most_0_8_of_mkls_time(monkeypatch, onednn_share, chosen):
    times = {"blas_train": 2e-3, "onednn_train": 2e-3 * onednn_share, "blas_decode": 2e-4, "onednn_decode": 1e-4}
    monkeypatch.setattr(cpu_matmul, "onednn_available", lambda: True)
    monkeypatch.setattr(cpu_matmul, "measure", lambda: times)
    monkeypatch.setenv(cpu_matmul.MODE_ENV, "auto")
    cpu_matmul.onednn_pays.cache_clear()
    try:
        assert cpu_matmul.onednn_pays() is (chosen == "oneDNN")
        assert cpu_matmul.choice().startswith(f"{chosen}, the faster here (a training product 2.00 ms MKL, ")
    finally:
        cpu_matmul.onednn_pays.cache_clear()


@needs_onednn
def test_auto_measures_both_libraries():
    times = cpu_matmul.measure()
    assert set(times) == {"blas_train", "onednn_train", "blas_decode", "onednn_decode"}
    assert all(0 < t < 1 for t in times.values())


@needs_onednn
def test_a_routed_policy_trains_with_the_gradients_of_an_unrouted_one(tok, onednn):
    plain = _small(tok, "qwen3").train()
    routed_model = copy.deepcopy(plain)
    policy = Policy(routed_model, tok, torch.device("cpu"))
    assert any(cpu_matmul.is_routed(m) for m in policy.model.modules())
    batch = make_batch([tok("12+34=")["input_ids"], tok("9")["input_ids"]],
                       [tok("46</answer>")["input_ids"], tok(" 9 <think>")["input_ids"]], tok.pad_token_id)
    for model in (plain, routed_model):
        completion_logprobs(model, batch)[0].sum().backward()
    for a, b in zip(plain.parameters(), routed_model.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama"])
def test_the_engine_with_onednn_products_gives_generates_tokens(tok, kind, onednn):
    model = _small(tok, kind)
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    expected = TransformersEngine(model, tok).generate(PROMPTS, 1, params)  # F.linear through MKL
    engine = FastEngine(model, tok, max_slots=2)
    got = engine.generate(PROMPTS, 1, params)
    assert engine.compact.onednn and engine.compact.packed_rows == 2
    assert _ids(got) == _ids(expected)
    for a, b in zip(got, expected):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)


@needs_onednn
def test_the_engine_samples_the_same_with_either_library(tok, monkeypatch):
    model = _small(tok, "tiny")
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=3)
    results = {}
    for choice in (True, False):
        monkeypatch.setattr(cpu_matmul, "onednn_pays", lambda choice=choice: choice)
        engine = FastEngine(model, tok)
        results[choice] = engine.generate(PROMPTS, 4, params)
        assert engine.compact.onednn is choice
    assert _ids(results[True]) == _ids(results[False])
    for a, b in zip(results[True], results[False]):
        for x, y in zip(a, b):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
