"""r1lab's own engine (r1lab.engine.fast) against transformers' generate and the trainer's logprobs, on the tiny
model and on tiny random models of the real architectures built on the spot (fp32, CPU)."""

import logging

import pytest
import torch
from random_models import small_model as _small
from transformers import TopKLogitsWarper, TopPLogitsWarper

from r1lab.engine import FastEngine, SamplingParams, TransformersEngine, make_engine, unsupported_reason
from r1lab.engine.fast import CompactModel, HFSlotModel, sample_next, uniforms, warp
from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.models import build_tiny_model, build_tiny_tokenizer

PROMPTS = ["12+34=", "A conversation: what is 7*8? <think>", "9"]


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def _ids(out):
    return [g.completion_ids for group in out for g in group]


@pytest.mark.parametrize("kind", ["tiny", "qwen2", "qwen3", "llama", "mistral"])
def test_greedy_tokens_equal_transformers_generate(tok, kind):
    model = _small(tok, kind)
    assert unsupported_reason(model) is None
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    expected = TransformersEngine(model, tok).generate(PROMPTS, 1, params)
    got = FastEngine(model, tok, max_slots=2).generate(PROMPTS, 1, params)
    assert _ids(got) == _ids(expected)
    assert [g.truncated for group in got for g in group] == [g.truncated for group in expected for g in group]
    for a, b in zip(got, expected):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)


@pytest.mark.parametrize("kind", ["tiny", "qwen3"])
def test_sampling_logprobs_equal_the_trainers(tok, kind):
    model = _small(tok, kind)
    out = FastEngine(model, tok).generate(PROMPTS, 4, SamplingParams(temperature=1.0, max_new_tokens=20, seed=3))
    generations = [g for group in out for g in group]
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations],
                       tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(model, batch)[0]
    for row, g in enumerate(generations):
        assert len(g.logprobs) == len(g.completion_ids)
        assert g.logprobs == pytest.approx(trainer[row, :len(g.completion_ids)].tolist(), abs=1e-5)


def test_same_seed_same_completions_other_seed_differs(tok):
    engine = FastEngine(_small(tok, "tiny"), tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=7)
    a, b = engine.generate(PROMPTS, 4, params), engine.generate(PROMPTS, 4, params)
    c = engine.generate(PROMPTS, 4, SamplingParams(temperature=1.0, max_new_tokens=16, seed=8))
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)


def _eos_prone(tok):
    """A model whose completions end at very different lengths (EOS is likely, but not dominant)."""
    model = _small(tok, "qwen3")
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.model.norm.weight.sign() * 0.6
    return model


def test_slot_refill_gives_the_completions_of_one_sequence_at_a_time(tok):
    model = _eos_prone(tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=40, seed=2)
    prompts = PROMPTS * 3
    refilled = FastEngine(model, tok, max_slots=5).generate(prompts, 4, params)
    lengths = [len(ids) for ids in _ids(refilled)]
    assert min(lengths) * 4 <= max(lengths), lengths  # the test needs very different lengths
    assert _ids(refilled) == _ids(FastEngine(model, tok, max_slots=1).generate(prompts, 4, params))
    assert _ids(refilled) == _ids(FastEngine(model, tok, max_slots=64).generate(prompts, 4, params))


def test_shared_prefill_gives_the_completions_of_separate_prefills(tok):
    model = _small(tok, "llama")
    params = SamplingParams(temperature=0.9, top_p=0.9, max_new_tokens=12, seed=4)
    shared = FastEngine(model, tok).generate([PROMPTS[1]], 5, params)  # one prefill, copied into 5 slots
    separate = FastEngine(model, tok, prefill_batch=1).generate([PROMPTS[1]] * 5, 1, params)  # 5 prefills
    assert _ids(shared) == _ids(separate)


def test_eos_and_truncation_flags(tok):
    model = _eos_prone(tok)
    out = FastEngine(model, tok).generate(PROMPTS, 8, SamplingParams(temperature=1.0, max_new_tokens=10, seed=0))
    seen = set()
    for g in (g for group in out for g in group):
        ended = g.completion_ids[-1] == tok.eos_token_id
        assert g.truncated == (not ended)
        assert tok.eos_token_id not in g.completion_ids[:-1]
        assert g.truncated == (len(g.completion_ids) == 10) or not g.truncated
        assert g.text == tok.decode(g.completion_ids[:-1] if ended else g.completion_ids, skip_special_tokens=True)
        seen.add(g.truncated)
    assert seen == {True, False}


def test_warp_matches_transformers_warpers():
    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[0, :5] = 4.0  # ties at the top-k boundary
    for temperature, top_k, top_p in ((0.7, 0, 0.9), (1.0, 5, 1.0), (1.3, 8, 0.8), (1.0, 0, 0.5)):
        scores = logits / temperature
        if top_k:
            scores = TopKLogitsWarper(top_k)(None, scores)
        if top_p < 1:
            scores = TopPLogitsWarper(top_p)(None, scores)
        expected = torch.log_softmax(scores, dim=-1)
        got = warp(logits, SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p))
        assert torch.equal(torch.isinf(got), torch.isinf(expected))
        finite = torch.isfinite(expected)
        assert torch.allclose(got[finite], expected[finite], atol=1e-6)


def test_sampling_follows_the_distribution_and_never_a_cut_token():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(20000, 4)
    u = uniforms(1, torch.arange(20000), torch.zeros(20000, dtype=torch.long))
    assert 0.0 <= u.min() and u.max() < 1.0
    tokens, logprobs = sample_next(logits, SamplingParams(temperature=1.0, top_p=0.7), u)
    counts = torch.bincount(tokens, minlength=4).float() / 20000
    # top-p 0.7 keeps {0.5, 0.3}: renormalised to 0.625 / 0.375
    assert counts[2:].sum() == 0
    assert counts[0].item() == pytest.approx(0.625, abs=0.02)
    assert logprobs[tokens == 0].exp().mean().item() == pytest.approx(0.625, abs=1e-6)
    # the very top of [0, 1): rounding puts u × total at the top of the cdf; the likeliest token, never a cut one
    tokens, _ = sample_next(logits[:1], SamplingParams(temperature=1.0, top_p=0.7), torch.tensor([1.0]))
    assert tokens.item() == 0


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft's call
def test_lora_policy_samples_with_merged_adapters_refreshed_after_a_step(tok):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_small(tok, "qwen2"), peft.LoraConfig(r=4, lora_alpha=8,
                                                                       target_modules=["q_proj", "v_proj", "up_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    params = SamplingParams(temperature=0.0, max_new_tokens=16)
    engine = FastEngine(model, tok)
    assert _ids(engine.generate(PROMPTS, 1, params)) == _ids(TransformersEngine(model, tok).generate(PROMPTS, 1,
                                                                                                    params))
    with torch.no_grad():  # an "optimizer step" on the adapters
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = _ids(TransformersEngine(model, tok).generate(PROMPTS, 1, params))
    engine.sync_weights()
    assert _ids(engine.generate(PROMPTS, 1, params)) == expected


def test_weights_are_refreshed_only_when_told(tok):
    model = _small(tok, "tiny")
    engine = FastEngine(model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=12)
    before = _ids(engine.generate(PROMPTS, 1, params))
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # tied with the embedding: every output changes
    assert _ids(engine.generate(PROMPTS, 1, params)) == before  # its own copy: the step is not seen yet
    engine.sync_weights()
    assert _ids(engine.generate(PROMPTS, 1, params)) == _ids(TransformersEngine(model, tok).generate(PROMPTS, 1,
                                                                                                    params))


@pytest.mark.parametrize("kind", ["qwen2", "qwen3"])
def test_a_refresh_copies_into_the_same_storage_what_a_fresh_copy_holds(tok, kind):
    """After an optimizer step the engine's buffers hold exactly what a new engine would arrange (fused q/k/v with
    rope-paired rows and biases, Qwen3's q/k norms, fused gate/up), at the same addresses (CUDA graphs read them)."""
    model = _small(tok, kind)
    compact = CompactModel(model)
    addresses = {name: w.data_ptr() for name, w in compact.weights.items() if w is not None}
    layout = compact.layout
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    compact.refresh()
    fresh = CompactModel(model)
    assert compact.layout == layout
    assert {name: w.data_ptr() for name, w in compact.weights.items() if w is not None} == addresses
    assert compact.weights.keys() == fresh.weights.keys()
    for name, w in fresh.weights.items():
        assert (w is None and compact.weights[name] is None) or torch.equal(compact.weights[name], w), name


def _gpt2(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                       eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model.eval()


def test_another_architecture_runs_its_own_forward_in_the_slot_engine(tok, caplog):
    model = _gpt2(tok)  # learned absolute positions, Conv1D layers: nothing the compact forward knows
    with caplog.at_level(logging.INFO, logger="r1lab"):
        engine = make_engine("auto", model, tok)
    assert isinstance(engine, FastEngine) and isinstance(engine.compact, HFSlotModel)
    assert "engine auto: the model's own forward in r1lab's slot engine (architecture 'gpt2'" in caplog.text
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    expected = TransformersEngine(model, tok).generate(PROMPTS, 1, params)
    got = engine.generate(PROMPTS, 1, params)
    assert _ids(got) == _ids(expected) and engine.fallback is None
    for a, b in zip(got, expected):
        assert a[0].logprobs == pytest.approx(b[0].logprobs, abs=1e-5)
    with pytest.raises(ValueError, match="engine 'fast' cannot run this model: architecture 'gpt2'"):
        make_engine("fast", model, tok)
    assert isinstance(make_engine("auto", _small(tok, "tiny"), tok).compact, CompactModel)


def test_the_models_own_forward_gives_the_compact_forwards_completions(tok):
    model = _small(tok, "qwen3")
    params = SamplingParams(temperature=1.0, max_new_tokens=16, seed=3)
    compact = FastEngine(model, tok, forward="compact", max_slots=5).generate(PROMPTS, 4, params)
    own = FastEngine(model, tok, forward="hf", max_slots=5).generate(PROMPTS, 4, params)
    assert _ids(compact) == _ids(own)
    for a, b in zip((g for group in compact for g in group), (g for group in own for g in group)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_a_model_whose_cache_the_slots_cannot_drive_falls_back_to_generate(tok, caplog, monkeypatch):
    def incompatible(self, prompts, pad_id):
        raise RuntimeError("the model's cache layout is not the one the slot engine expects")

    monkeypatch.setattr(HFSlotModel, "prefill_last", incompatible)
    model = _gpt2(tok)
    engine = make_engine("auto", model, tok)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    with caplog.at_level(logging.INFO, logger="r1lab"):
        got = engine.generate(PROMPTS, 1, params)
    assert "cannot drive the slot cache (RuntimeError: the model's cache layout" in caplog.text
    assert isinstance(engine.fallback, TransformersEngine)
    assert _ids(got) == _ids(TransformersEngine(model, tok).generate(PROMPTS, 1, params))


def test_sliding_window_shorter_than_the_sequences_falls_back(tok, caplog):
    model = _small(tok, "mistral")
    model.config.sliding_window = 8
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    with caplog.at_level(logging.INFO, logger="r1lab"):
        out = FastEngine(model, tok).generate(PROMPTS, 1, params)
    assert "longer than the sliding window (8)" in caplog.text
    assert _ids(out) == _ids(TransformersEngine(model, tok).generate(PROMPTS, 1, params))


def test_progress_is_told_as_completions_finish(tok):
    """A long call (an evaluation, a data stage) reports finished completions as they come, then all of them."""
    model = _eos_prone(tok)
    told = []
    params = SamplingParams(temperature=1.0, max_new_tokens=40, seed=2, progress=lambda done, total: told.append(
        (done, total)))
    FastEngine(model, tok, max_slots=5).generate(PROMPTS * 3, 4, params)
    total = len(PROMPTS) * 3 * 4
    assert told[-1] == (total, total) and all(t == total for _, t in told)
    assert [d for d, _ in told] == sorted(d for d, _ in told) and len(told) > 3  # several reports, in order
    told.clear()
    TransformersEngine(model, tok, batch_size=8).generate(PROMPTS * 3, 4, params)  # after each batch
    assert told == [(min(done, total), total) for done in range(8, total + 8, 8)]


def test_batch_and_span_buckets():
    from r1lab.engine.fast import batch_bucket, span_bucket

    assert [span_bucket(n, 1100) for n in (1, 64, 65, 300, 1024, 1025, 1100)] == [64, 64, 128, 512, 1024, 1100, 1100]
    assert span_bucket(5, 40, smallest=8) == 8 and span_bucket(30, 40, smallest=8) == 32
    assert [batch_bucket(n, 256) for n in (1, 2, 3, 5, 8, 9, 100, 200, 256)] == [1, 2, 4, 8, 8, 16, 128, 256, 256]
    assert batch_bucket(5, 6) == 6 and batch_bucket(3, 6) == 4  # the workspace's own size is the last bucket
    with pytest.raises(ValueError, match="7 sequences do not fit a workspace of 6 slots"):
        batch_bucket(7, 6)


def test_static_steps_by_default_on_a_gpu_only(monkeypatch):
    from r1lab.engine.fast import static_by_default

    assert static_by_default("cuda", True) and not static_by_default("cpu", True)
    assert not static_by_default("cuda", False)  # the model's own forward: no graphs
    monkeypatch.setenv("R1LAB_CUDA_GRAPHS", "0")
    assert not static_by_default("cuda", True)


def _shapes_used(engine, monkeypatch) -> list[tuple[int, int]]:
    used = []
    original = engine._static_step
    monkeypatch.setattr(engine, "_static_step",
                        lambda ws, bucket, span: used.append((bucket, span)) or original(ws, bucket, span))
    return used


@pytest.mark.parametrize("kind", ["eos_prone", "qwen2", "qwen3"])
def test_static_decode_gives_the_completions_of_the_dynamic_one(tok, kind, monkeypatch):
    """The static step (fixed batch sizes over the whole cache length, what CUDA graphs replay on a GPU) run on the
    CPU: the same tokens and logprobs as the step over the live rows and used positions only, through slot refill,
    the batch shrinking through its buckets, the attention span growing through its own, and a slot count (6) that
    is not a power of two (its own bucket)."""
    model = _eos_prone(tok) if kind == "eos_prone" else _small(tok, kind)
    for params in (SamplingParams(temperature=1.0, max_new_tokens=30, seed=5),
                   SamplingParams(temperature=0.0, max_new_tokens=16)):
        dynamic = FastEngine(model, tok, max_slots=6, static=False).generate(PROMPTS * 3, 4, params)
        engine = FastEngine(model, tok, max_slots=6, static=True)
        engine.SMALLEST_SPAN = 8  # these sequences are short: spans of 8, 16, 32 and the whole cache
        used = _shapes_used(engine, monkeypatch)
        static = engine.generate(PROMPTS * 3, 4, params)
        assert _ids(static) == _ids(dynamic)
        for a, b in zip((g for group in static for g in group), (g for group in dynamic for g in group)):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5) and a.truncated == b.truncated
        batches, spans = [b for b, _ in used], [s for _, s in used]
        assert engine._kept.slots == 6 and batches[0] == 6
        assert spans == sorted(spans) and len(set(spans)) >= 2 and spans[-1] <= engine._kept.length, sorted(set(spans))
        if kind == "eos_prone" and params.temperature > 0:
            assert len(set(batches)) >= 3, sorted(set(batches))  # the batch shrank through smaller buckets


def test_static_workspace_is_kept_between_calls_and_sees_weight_updates(tok):
    model = _small(tok, "qwen2")
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=1)
    engine = FastEngine(model, tok, max_slots=16, static=True)
    assert not engine.graphs  # a CPU: the static step runs uncaptured
    first = engine.generate(PROMPTS, 4, params)
    kept = engine._kept
    assert kept is not None and kept.slots == 16
    smaller = engine.generate(PROMPTS[:2], 2, params)  # fits: the same storage, reset in place
    assert engine._kept is kept
    assert _ids(smaller) == _ids(FastEngine(model, tok, static=False).generate(PROMPTS[:2], 2, params))
    with torch.no_grad():  # an optimizer step: the engine's copy is refreshed in place, the workspace stays
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    engine.sync_weights()
    after = engine.generate(PROMPTS, 4, params)
    assert engine._kept is kept and _ids(after) != _ids(first)
    assert _ids(after) == _ids(FastEngine(model, tok, static=False).generate(PROMPTS, 4, params))
    longer = SamplingParams(temperature=1.0, max_new_tokens=40, seed=1)
    engine.generate(PROMPTS[:1], 2, longer)  # does not fit: a new workspace, large enough for both kinds of call
    union = engine._kept
    assert union is not kept and (union.slots, union.max_new) == (16, 40) and union.length >= kept.length
    again = engine.generate(PROMPTS, 4, params)  # the first kind of call again: no new workspace
    assert engine._kept is union and _ids(again) == _ids(after)


def test_a_step_that_cannot_be_captured_runs_uncaptured(tok, caplog):
    model = _small(tok, "tiny")
    params = SamplingParams(temperature=1.0, max_new_tokens=10, seed=3)
    engine = FastEngine(model, tok, static=True)
    engine.graphs = True  # on a CPU, capture fails (no CUDA): the engine must say so and sample all the same
    with caplog.at_level(logging.INFO, logger="r1lab"):
        out = engine.generate(PROMPTS, 2, params)
    assert "the decode step could not be captured in a CUDA graph" in caplog.text and not engine.graphs
    assert _ids(out) == _ids(FastEngine(model, tok, static=False).generate(PROMPTS, 2, params))
    with pytest.raises(ValueError, match="static decoding needs the compact forward"):
        FastEngine(_gpt2(tok), tok, static=True)


@pytest.mark.parametrize("static", [False, True])
def test_looking_for_finished_sequences_every_few_steps_changes_nothing(tok, static):
    """On a GPU the host looks at which sequences ended only every 8 steps (each look waits for the device): a
    sequence that ends between looks keeps its slot for a few steps without writing anything, and refill, the
    batch shrinking and every completion come out as when the host looks after every step."""
    model = _eos_prone(tok)
    params = SamplingParams(temperature=1.0, max_new_tokens=30, seed=7)
    every_step = FastEngine(model, tok, max_slots=5, check_every=1, static=static).generate(PROMPTS * 3, 4, params)
    lengths = [len(ids) for ids in _ids(every_step)]
    assert min(lengths) * 3 <= max(lengths), lengths  # sequences end at very different steps
    every_8 = FastEngine(model, tok, max_slots=5, check_every=8, static=static).generate(PROMPTS * 3, 4, params)
    assert _ids(every_8) == _ids(every_step)
    for a, b in zip((g for group in every_8 for g in group), (g for group in every_step for g in group)):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5) and a.truncated == b.truncated


@pytest.mark.parametrize("kind,static", [("tiny", False), ("qwen3", False), ("llama", False), ("llama", True)])
def test_a_bf16_engine_samples_close_to_the_fp32_trainer(tok, kind, static):
    """The compute path of a GPU run (bf16 weights in the engine, fp32 master weights), checked on the CPU: the
    sampler-trainer gap stays at bf16's rounding (these random models have large logits: ~0.03 mean; the run warns at
    0.05), where a wrong rotation or norm in the bf16 path would give gaps of 1 and more."""
    model = _small(tok, kind)
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=1)
    engine = FastEngine(model, tok, dtype=torch.bfloat16, static=static)  # static: as the CUDA graphs step
    gens = [g for group in engine.generate(PROMPTS, 4, params) for g in group]
    batch = make_batch([g.prompt_ids for g in gens], [g.completion_ids for g in gens], tok.pad_token_id)
    with torch.no_grad():
        trainer = completion_logprobs(model, batch)[0]
    gaps = torch.tensor([abs(a - b) for i, g in enumerate(gens)
                         for a, b in zip(g.logprobs, trainer[i, :len(g.logprobs)].tolist())])
    assert gaps.mean() < 0.05 and gaps.max() < 0.5, (gaps.mean(), gaps.max())


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "llama"])
@pytest.mark.parametrize("static", [False, True])
def test_fused_decode_attention_gives_the_matmul_attentions_completions(tok, kind, static):
    """attention='sdpa' (one scaled_dot_product_attention call with the slots' mask) against the two products:
    through refill (4 slots for 9 sequences) and, static, spans longer than what a slot may see."""
    model = _small(tok, kind)
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=3)
    matmul = FastEngine(model, tok, max_slots=4, static=static).generate(PROMPTS, 3, params)
    fused = FastEngine(model, tok, max_slots=4, static=static, attention="sdpa").generate(PROMPTS, 3, params)
    assert _ids(fused) == _ids(matmul)
    for a, b in zip(fused, matmul):
        for x, y in zip(a, b):
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)


def test_an_unknown_decode_attention_is_refused(tok):
    with pytest.raises(ValueError, match="decode attention 'flash': choose one of matmul, sdpa"):
        FastEngine(_small(tok, "qwen2"), tok, attention="flash")
    with pytest.raises(ValueError, match="attention='sdpa' is the compact forward's"):
        FastEngine(_small(tok, "qwen2"), tok, forward="hf", attention="sdpa")
