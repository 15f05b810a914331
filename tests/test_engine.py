import pytest
import torch

from r1lab.engine import SamplingParams, TransformersEngine, make_engine
from r1lab.models import build_tiny_model, build_tiny_tokenizer


@pytest.fixture(scope="module")
def engine():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=3)
    return TransformersEngine(model, tok)


def test_g_samples_per_prompt_and_shapes(engine):
    out = engine.generate(["1+2", "33+44"], 3, SamplingParams(max_new_tokens=5, seed=1))
    assert len(out) == 2 and all(len(group) == 3 for group in out)
    for group in out:
        for g in group:
            assert 1 <= len(g.completion_ids) <= 5
            assert g.truncated == (engine.tokenizer.eos_token_id not in g.completion_ids)


def test_same_seed_same_completions_other_seed_differs(engine):
    params = SamplingParams(max_new_tokens=8, seed=7)
    a = engine.generate(["1+2", "5+5"], 4, params)
    b = engine.generate(["1+2", "5+5"], 4, params)
    c = engine.generate(["1+2", "5+5"], 4, SamplingParams(max_new_tokens=8, seed=8))
    texts = lambda out: [g.text for group in out for g in group]
    assert texts(a) == texts(b)
    assert texts(a) != texts(c)


def test_stops_at_eos_and_keeps_it_in_ids():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    # make EOS the overwhelming next token: the engine must stop after one token and mark it not truncated
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[tok.eos_token_id] = 0  # tied embedding: bias via a large output row instead
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(model.config.hidden_size, len(tok), bias=True)
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.fill_(-20.0)
        model.lm_head.bias[tok.eos_token_id] = 20.0
    out = TransformersEngine(model, tok).generate(["1+2"], 2, SamplingParams(max_new_tokens=6, seed=0))
    for g in out[0]:
        assert g.completion_ids == [tok.eos_token_id] and not g.truncated and g.text == ""


def test_greedy_is_deterministic_across_seeds(engine):
    a = engine.generate(["12+34"], 2, SamplingParams(temperature=0.0, max_new_tokens=6, seed=1))
    b = engine.generate(["12+34"], 2, SamplingParams(temperature=0.0, max_new_tokens=6, seed=2))
    assert a[0][0].text == a[0][1].text == b[0][0].text


def test_unknown_engine_name(engine):
    with pytest.raises(ValueError, match="unknown generation engine 'vllx'"):
        make_engine("vllx", engine.model, engine.tokenizer)


def _transformers_own_sampling(model, tok, prompts, params):
    """Token ids from model.generate with transformers' own warpers (what the engine did before it recorded
    logprobs): the engine's explicit warpers must sample exactly the same tokens."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(params.seed)
    out = model.generate(**enc, do_sample=True, temperature=params.temperature, top_p=params.top_p,
                         top_k=params.top_k, max_new_tokens=params.max_new_tokens,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return out[:, enc["input_ids"].shape[1]:].tolist()


@pytest.mark.parametrize("temperature,top_p,top_k", [(1.0, 1.0, 0), (0.6, 0.95, 0), (0.7, 1.0, 5), (1.3, 0.8, 10)])
def test_recording_logprobs_samples_the_same_tokens_as_transformers(engine, temperature, top_p, top_k):
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=10, seed=5)
    prompts = ["1+2", "33+44", "7"]
    expected = _transformers_own_sampling(engine.model, engine.tokenizer, prompts, params)
    out = engine.generate(prompts, 1, params)
    eos = engine.tokenizer.eos_token_id
    for row, [generation] in zip(expected, out):
        cut = row[:row.index(eos) + 1] if eos in row else row
        assert generation.completion_ids == cut
        assert len(generation.logprobs) == len(generation.completion_ids)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_equal_the_trainers_at_the_sampling_temperature(engine, temperature):
    """Without top-p/top-k truncation the sampler's logprob of each token is log softmax(logits / T): the same
    number the trainer's forward pass computes (r1lab.logprobs.completion_logprobs with that temperature)."""
    from r1lab.logprobs import completion_logprobs, make_batch

    out = engine.generate(["1+2", "33+44"], 3, SamplingParams(temperature=temperature, max_new_tokens=8, seed=2))
    generations = [g for group in out for g in group]
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations],
                       engine.tokenizer.pad_token_id)
    with torch.no_grad():
        trainer, _ = completion_logprobs(engine.model, batch, temperature=temperature)
    for row, g in enumerate(generations):
        assert torch.allclose(torch.tensor(g.logprobs), trainer[row, :len(g.completion_ids)], atol=1e-5)


def test_top_p_logprobs_are_those_of_the_truncated_distribution(engine):
    """With top-p the sampler renormalises over the nucleus: each token's logprob is at least its untruncated one,
    and a token that kept all the mass is near 0."""
    from r1lab.logprobs import completion_logprobs, make_batch

    params = SamplingParams(temperature=1.0, top_p=0.5, max_new_tokens=8, seed=4)
    generations = [g for group in engine.generate(["1+2", "5"], 4, params) for g in group]
    batch = make_batch([g.prompt_ids for g in generations], [g.completion_ids for g in generations],
                       engine.tokenizer.pad_token_id)
    with torch.no_grad():
        full, _ = completion_logprobs(engine.model, batch)
    for row, g in enumerate(generations):
        sampled = torch.tensor(g.logprobs)
        assert (sampled <= 1e-6).all() and (sampled >= full[row, :len(g.completion_ids)] - 1e-5).all()
    assert any(lp > full[row, j] + 1e-3 for row, g in enumerate(generations) for j, lp in enumerate(g.logprobs))


def test_greedy_logprobs_are_the_models_own(engine):
    from r1lab.logprobs import completion_logprobs, make_batch

    [[g]] = engine.generate(["12+34"], 1, SamplingParams(temperature=0.0, max_new_tokens=6))
    batch = make_batch([g.prompt_ids], [g.completion_ids], engine.tokenizer.pad_token_id)
    with torch.no_grad():
        full, _ = completion_logprobs(engine.model, batch)
    assert torch.allclose(torch.tensor(g.logprobs), full[0, :len(g.completion_ids)], atol=1e-5)
