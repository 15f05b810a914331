import pytest
import torch
from random_models import small_model

from r1lab.logprobs import completion_logprobs, make_batch, shared_prompt_rows
from r1lab.models import build_tiny_model, build_tiny_tokenizer, enable_activation_checkpointing
from r1lab.value_model import ValueModel


def naive_logprobs(model, prompt, completion):
    ids = torch.tensor([prompt + completion])
    logp = torch.log_softmax(model(ids).logits.float(), -1)[0]
    return torch.stack([logp[len(prompt) + j - 1, t] for j, t in enumerate(completion)])


def test_matches_unpadded_full_logits_with_left_and_right_padding():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=1).eval()
    prompts = [[5, 6, 7, 8], [9, 10]]
    completions = [[11, 12], [13, 14, 15, 16, 17]]
    batch = make_batch(prompts, completions, tok.pad_token_id)
    assert batch.input_ids.shape == (2, 4 + 5) and batch.completion_mask.tolist() == [[1, 1, 0, 0, 0], [1] * 5]
    with torch.no_grad():
        logprobs, entropy = completion_logprobs(model, batch, chunk_size=2, with_entropy=True)
    for row, (p, c) in enumerate(zip(prompts, completions)):
        expected = naive_logprobs(model, p, c)
        assert torch.allclose(logprobs[row, : len(c)], expected, atol=1e-5)
    assert (entropy >= 0).all() and entropy.shape == (2, 5)


def test_gradient_flows_through_chunked_checkpointed_head():
    tok = build_tiny_tokenizer()
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, seed=2)
    batch = make_batch([[5, 6, 7]], [[8, 9, 10]], tok.pad_token_id)
    logprobs, _ = completion_logprobs(model, batch, chunk_size=1)
    logprobs.sum().backward()
    reference = model.model.embed_tokens.weight.grad.clone()
    model.zero_grad()
    naive_logprobs(model, [5, 6, 7], [8, 9, 10]).sum().backward()
    assert torch.allclose(reference, model.model.embed_tokens.weight.grad, atol=1e-5)


# --- each distinct prompt through the decoder once (shared_prompt_rows) -------------------------------------------

def _random_model(tok, kind: str):
    if kind == "qwen2_sliding":  # every layer a sliding-window one
        return small_model(tok, "qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=0).train()
    return small_model(tok, kind).train()


def _grouped_batch(tok):
    """Three prompts of different lengths with 3, 1 and 4 completions each (right-padded, some of one token), the
    rows of a group not next to each other."""
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 40, (n,), generator=g).tolist() for n in (6, 2, 9)]
    owners = [0, 2, 0, 1, 2, 2, 0, 2]
    completions = [torch.randint(5, 40, (n,), generator=g).tolist() for n in (7, 1, 12, 3, 5, 1, 9, 12)]
    return make_batch([prompts[o] for o in owners], completions, tok.pad_token_id)


def _logprobs_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    logprobs, entropy = completion_logprobs(model, batch, share_prompts=share, with_entropy=True, chunk_size=4)
    weights = torch.linspace(0.5, 2.0, logprobs.numel()).view_as(logprobs)  # every token's gradient counts
    (logprobs * weights * batch.completion_mask).sum().backward()
    return logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["tiny", "qwen2", "qwen3", "llama"])
def test_each_prompt_once_gives_the_logprobs_entropy_and_gradients_of_whole_rows(kind):
    tok = build_tiny_tokenizer()
    model = _random_model(tok, kind)
    batch = _grouped_batch(tok)
    shared = shared_prompt_rows(model.get_decoder(), batch)
    assert shared is not None and shared[0].shape == shared[1].shape == (3, batch.prompt_width)
    assert len(set(shared[2][[0, 2, 6]].tolist())) == 1 and len(set(shared[2].tolist())) == 3
    whole, once = _logprobs_and_grads(model, batch, False), _logprobs_and_grads(model, batch, True)
    mask = batch.completion_mask.bool()
    assert (whole[0] - once[0])[mask].abs().max() < 1e-5
    assert (whole[1] - once[1])[mask].abs().max() < 1e-5
    assert whole[2].keys() == once[2].keys() and len(whole[2]) > 0
    for name, grad in whole[2].items():  # fp32 sums in another order: equal to a few ulps of the largest entry
        assert (grad - once[2][name]).abs().max() <= 2e-6 * grad.abs().max(), name
    with torch.no_grad():  # and the row of the shortest prompt against the model's own full logits
        completion = batch.input_ids[3, batch.prompt_width:][:3].tolist()
        expected = naive_logprobs(model, batch.input_ids[3, batch.prompt_width - 2:batch.prompt_width].tolist(),
                                  completion)
    assert torch.allclose(once[0][3, :3], expected, atol=1e-5)


def test_the_decoder_sees_each_prompt_once():
    tok = build_tiny_tokenizer()
    model = _random_model(tok, "tiny")
    batch = _grouped_batch(tok)
    seen = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, args, out: seen.append(args[0].numel()))
    with torch.no_grad():
        completion_logprobs(model, batch, share_prompts=False)
        whole = sum(seen)
        seen.clear()
        completion_logprobs(model, batch)
    hook.remove()
    rows, width = batch.input_ids.shape
    P = batch.prompt_width
    assert whole == rows * width and sum(seen) == 3 * P + rows * (width - P)


def test_rows_run_whole_where_sharing_cannot_apply(monkeypatch):
    tok = build_tiny_tokenizer()
    model = _random_model(tok, "tiny")
    batch = _grouped_batch(tok)
    distinct = make_batch([[5, 6], [7, 8, 9], [5, 7]], [[10], [11, 12], [13]], tok.pad_token_id)
    assert shared_prompt_rows(model.get_decoder(), distinct) is None  # no prompt repeats
    single = make_batch([[5, 6]], [[10, 11]], tok.pad_token_id)
    assert shared_prompt_rows(model.get_decoder(), single) is None
    monkeypatch.setenv("R1LAB_SHARE_PROMPTS", "0")  # the switch
    assert shared_prompt_rows(model.get_decoder(), batch) is None
    monkeypatch.delenv("R1LAB_SHARE_PROMPTS")
    assert shared_prompt_rows(model.get_decoder(), batch) is not None
    # sliding-window layers keep a cache of their own kind
    assert shared_prompt_rows(_random_model(tok, "qwen2_sliding").get_decoder(), batch) is None
    enable_activation_checkpointing(model)  # a recomputed layer would write the cache a second time
    assert shared_prompt_rows(model.get_decoder(), batch) is None
    model.train()
    logprobs, _ = completion_logprobs(model, batch)  # and the whole-row path still runs under it
    assert torch.isfinite(logprobs).all()


def test_a_value_model_sees_each_prompt_once_with_the_values_and_gradients_of_whole_rows(monkeypatch):
    tok = build_tiny_tokenizer()
    critic = ValueModel(_random_model(tok, "qwen2").get_decoder())
    with torch.no_grad():
        critic.head.weight.normal_(0, 1.0)  # the default head starts near 0: make values and gradients sizeable
    batch = _grouped_batch(tok)
    results = []
    for switch in ("0", "1"):
        monkeypatch.setenv("R1LAB_SHARE_PROMPTS", switch)
        critic.zero_grad(set_to_none=True)
        values = critic.values(batch)
        (values * batch.completion_mask).square().sum().backward()
        results.append((values.detach(), {n: p.grad.clone() for n, p in critic.named_parameters()}))
    (whole, whole_grads), (once, once_grads) = results
    mask = batch.completion_mask.bool()
    assert (whole - once)[mask].abs().max() <= 1e-5 * whole[mask].abs().max()
    for name, grad in whole_grads.items():
        assert (grad - once_grads[name]).abs().max() <= 2e-6 * grad.abs().max(), name


def test_each_prompt_once_under_bf16_autocast_agrees_with_whole_rows():
    """bf16-mixed (fp32 weights, bf16 compute under autocast): the cached prompt keys and values are bf16 and join
    the completions' in the same dtype; the logprobs agree with whole rows to bf16's precision."""
    tok = build_tiny_tokenizer()
    model = _random_model(tok, "qwen2")
    batch = _grouped_batch(tok)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        whole, _ = completion_logprobs(model, batch, share_prompts=False)
        once, _ = completion_logprobs(model, batch)
    mask = batch.completion_mask.bool()
    assert once.dtype == whole.dtype == torch.float32
    assert (whole - once)[mask].abs().max() < 0.1 and (whole - once)[mask].abs().mean() < 0.02
