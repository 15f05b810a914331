import torch

from r1lab.logprobs import completion_logprobs, make_batch
from r1lab.models import build_tiny_model, build_tiny_tokenizer


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
