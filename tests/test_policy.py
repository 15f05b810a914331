"""The policy object: micro-batches add up to the whole minibatch, one clip over every parameter group with a norm per
group, generators told once per optimizer step, the three kinds of reference, and a checkpoint that resumes exactly."""

import pytest
import torch

from r1lab.generation import Generator
from r1lab.logprobs import make_batch
from r1lab.losses import masked_mean
from r1lab.policy import (ModelSettings, OptimizerSettings, Policy, warmup_cosine, warmup_from_zero_then_decay,
                          warmup_then_decay)


@pytest.fixture()
def policy(tiny_checkpoint):
    return Policy.load(str(tiny_checkpoint), ModelSettings(), torch.device("cpu"))


def toy_batch(pad_id):
    # rows of different lengths, so that token and sequence weights differ
    prompts = [[5, 6, 7], [8, 9], [10, 11, 12, 13], [14]]
    completions = [[20, 21, 22, 23, 24], [25], [26, 27], [28, 29, 30]]
    return make_batch(prompts, completions, pad_id)


def token_mean_loss(rows, part, logprobs):
    return -masked_mean(logprobs, part.completion_mask), {"rows": float(len(rows))}


def sequence_mean_loss(rows, part, logprobs):
    per_row = (logprobs * part.completion_mask).sum(-1) / part.completion_mask.sum(-1)
    return -per_row.mean(), {}


def gradients(policy):
    return {name: p.grad.clone() for name, p in policy.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_fn,weight_by", [(token_mean_loss, "tokens"), (sequence_mean_loss, "sequences")])
def test_micro_batches_add_up_to_the_whole_minibatch(policy, loss_fn, weight_by):
    batch = toy_batch(policy.tokenizer.pad_token_id)
    rows = torch.arange(4)
    whole = policy.backward(batch, rows, loss_fn, weight_by=weight_by)
    expected = gradients(policy)
    policy.model.zero_grad(set_to_none=True)
    split = policy.backward(batch, rows, loss_fn, micro_batch_size=1, weight_by=weight_by)
    assert whole["loss"] == pytest.approx(split["loss"], abs=1e-6)
    assert whole["entropy"] == pytest.approx(split["entropy"], abs=1e-6)
    for name, grad in gradients(policy).items():
        torch.testing.assert_close(grad, expected[name], atol=1e-6, rtol=1e-5)


def test_a_loss_that_is_not_finite_names_itself(policy):
    batch = toy_batch(policy.tokenizer.pad_token_id)
    with pytest.raises(FloatingPointError, match="GRPO loss at step 7 is nan"):
        policy.backward(batch, torch.arange(4), lambda r, p, lp: (lp.sum() * float("nan"), {}),
                        name="GRPO loss at step 7")


def test_one_clip_over_every_group_and_a_norm_per_group(policy):
    critic = torch.nn.Linear(4, 1)
    policy.configure_optimizer(OptimizerSettings(lr=0.0, max_grad_norm=0.5, extra_groups=[
        {"name": "value", "params": critic.parameters(), "lr": 0.0}]), lambda step: 1.0)
    policy.zero_grad()
    policy.backward(toy_batch(policy.tokenizer.pad_token_id), torch.arange(4), token_mean_loss)
    (critic(torch.ones(2, 4)).sum() * 100).backward()
    before = {"policy": torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in policy.model.parameters()
                                                               if p.grad is not None])).item(),
              "value": torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in critic.parameters()])).item()}
    norms = policy.optimizer_step()
    assert norms["grad_norm"] == pytest.approx(before["policy"], rel=1e-5)
    assert norms["value_grad_norm"] == pytest.approx(before["value"], rel=1e-5)
    every = [p.grad for p in list(policy.model.parameters()) + list(critic.parameters()) if p.grad is not None]
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in every])).item() == pytest.approx(0.5, rel=1e-4)
    assert set(policy.learning_rates()) == {"lr", "value_lr"}


def test_generators_are_told_once_per_optimizer_step(policy):
    policy.configure_optimizer(OptimizerSettings(lr=1e-3), lambda step: 1.0)
    generator = Generator("transformers", policy.model, policy.tokenizer)
    told = []
    generator.weights_changed = lambda: told.append(policy.updates)
    policy.on_update(generator.weights_changed)
    batch = toy_batch(policy.tokenizer.pad_token_id)
    for _ in range(3):
        policy.zero_grad()
        policy.backward(batch, torch.arange(4), token_mean_loss, micro_batch_size=1)  # 4 micro-batches, no call
        assert len(told) == policy.updates
        policy.optimizer_step()
    assert told == [1, 2, 3]


def test_adamw_is_fused_on_a_cpu_and_steps_as_the_loop_does(policy, tiny_checkpoint):
    """The fused kernel (one pass per tensor) is the optimizer's; three steps land where torch's loop lands."""
    policy.configure_optimizer(OptimizerSettings(lr=1e-2, weight_decay=0.1, max_grad_norm=0.0), lambda step: 1.0)
    assert policy.optimizer.defaults["fused"] is True
    loop = Policy.load(str(tiny_checkpoint), ModelSettings(), torch.device("cpu"))
    loop.optimizer = torch.optim.AdamW(loop.model.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    batch = toy_batch(policy.tokenizer.pad_token_id)
    for _ in range(3):
        for each in (policy, loop):
            each.optimizer.zero_grad()
            each.backward(batch, torch.arange(4), token_mean_loss)
            each.optimizer.step()
    moved = [(a - b).abs().max().item() for a, b in zip(policy.model.parameters(), loop.model.parameters())]
    assert max(moved) < 1e-5  # rounding only: each step moves weights by up to lr = 1e-2, checked below
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(policy.model.parameters(),
                                                         Policy.load(str(tiny_checkpoint), ModelSettings(),
                                                                     torch.device("cpu")).model.parameters()))


def test_reference_kinds(policy):
    batch = toy_batch(policy.tokenizer.pad_token_id)
    policy.attach_reference(False)  # β = 0: nothing is loaded
    assert policy.reference is None and policy.reference_logprobs(batch) is None
    policy.attach_reference(True, resettable=True)
    start = policy.reference_logprobs(batch)
    policy.configure_optimizer(OptimizerSettings(lr=1e-2), lambda step: 1.0)
    policy.zero_grad()
    policy.backward(batch, torch.arange(4), token_mean_loss)
    policy.optimizer_step()
    with torch.no_grad():
        moved = policy.logprobs(batch)[0]
    assert not torch.allclose(moved, start)  # the policy moved, the frozen reference did not
    torch.testing.assert_close(policy.reference_logprobs(batch), start)
    assert policy.reset_reference()
    torch.testing.assert_close(policy.reference_logprobs(batch), moved)


def test_checkpoint_resumes_weights_optimizer_schedule_and_reference(policy, tiny_checkpoint, tmp_path):
    schedule = warmup_then_decay(10, 2, "cosine")
    policy.attach_reference(True, resettable=True)
    policy.configure_optimizer(OptimizerSettings(lr=1e-2, betas=(0.9, 0.99)), schedule)
    batch = toy_batch(policy.tokenizer.pad_token_id)
    for _ in range(2):
        policy.zero_grad()
        policy.backward(batch, torch.arange(4), token_mean_loss)
        policy.optimizer_step()
        policy.schedule_step()
    policy.reset_reference()
    policy.save_checkpoint(tmp_path / "checkpoint", step=2, extra={"note": "x"})

    again = Policy.load(str(tiny_checkpoint), ModelSettings(), torch.device("cpu"), resume_from=tmp_path / "checkpoint")
    again.attach_reference(True, resettable=True)
    again.configure_optimizer(OptimizerSettings(lr=1e-2, betas=(0.9, 0.99)), schedule)
    assert again.resume_step == 2 and again.resume_extra["note"] == "x"
    assert again.learning_rates() == policy.learning_rates()
    for (name, a), b in zip(policy.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(again.reference_logprobs(batch), policy.reference_logprobs(batch))
    for step in range(2):  # the next steps agree too (AdamW moments restored)
        for p in (policy, again):
            p.zero_grad()
            p.backward(batch, torch.arange(4), token_mean_loss)
            p.optimizer_step()
    for (name, a), b in zip(policy.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_schedules_hand_values():
    rl = warmup_then_decay(total_steps=10, warmup_steps=2, decay="cosine")
    assert rl(0) == pytest.approx(0.5 * 1.0)  # warmup half way, no decay yet
    assert rl(10) == pytest.approx(0.1)  # decayed to 10% at the end
    assert warmup_then_decay(10, 1, "linear")(5) == pytest.approx(1 - 0.9 * 0.5)
    assert warmup_then_decay(10, 1, "constant")(9) == 1.0
    sft = warmup_cosine(total_steps=5, warmup_steps=1, min_ratio=0.1)
    # warmup step, then cosine over steps 1..4: progress 0, 1/3, 2/3, 1 -> 0.1 + 0.45 (1 + cos(π p))
    assert [sft(s) for s in range(5)] == pytest.approx([1.0, 1.0, 0.775, 0.325, 0.1])
    with pytest.raises(ValueError, match="unknown learning-rate decay 'step'"):
        warmup_then_decay(10, 1, "step")
    # the RL stages': from 0 at the first step to the peak at step 2, then a cosine over steps 2..10
    rl_from_zero = warmup_from_zero_then_decay(total_steps=10, warmup_steps=2, decay="cosine")
    assert [rl_from_zero(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0.0, 0.5, 1.0, 0.55, 0.1])
    assert warmup_from_zero_then_decay(10, 0, "cosine")(0) == 1.0  # no warmup: the peak from the first step
    assert warmup_from_zero_then_decay(10, 2, "linear")(6) == pytest.approx(1 - 0.9 * 0.5)
    assert warmup_from_zero_then_decay(10, 2, "constant")(9) == 1.0
    with pytest.raises(ValueError, match="unknown learning-rate decay 'step'"):
        warmup_from_zero_then_decay(10, 1, "step")


def _share_of_weights_changed(policy, steps: int = 10, lr: float = 1e-6) -> float:
    """AdamW at ``lr`` for ``steps`` steps of a token-mean NLL: the share of weights whose stored value changed."""
    before = {name: p.detach().clone() for name, p in policy.model.named_parameters()}
    policy.configure_optimizer(OptimizerSettings(lr=lr, max_grad_norm=0.0), lambda step: 1.0)
    batch = toy_batch(policy.tokenizer.pad_token_id)
    for _ in range(steps):
        policy.zero_grad()
        policy.backward(batch, torch.arange(4), token_mean_loss)
        policy.optimizer_step()
    changed = sum((p.detach() != before[name]).sum().item() for name, p in policy.model.named_parameters())
    return changed / sum(p.numel() for p in policy.model.parameters())


def test_bf16_mixed_keeps_small_updates_that_pure_bf16_rounds_away(tiny_checkpoint):
    pure = Policy.load(str(tiny_checkpoint), ModelSettings(dtype="bfloat16"), torch.device("cpu"))
    mixed = Policy.load(str(tiny_checkpoint), ModelSettings(precision="bf16-mixed"), torch.device("cpu"))
    assert next(mixed.model.parameters()).dtype == torch.float32 and mixed.compute_dtype == torch.bfloat16
    with mixed.autocast():  # the forward really computes in bf16
        assert mixed.model(torch.tensor([[5, 6, 7]])).logits.dtype == torch.bfloat16
    share_pure, share_mixed = _share_of_weights_changed(pure), _share_of_weights_changed(mixed)
    # lr 1e-6: AdamW's first steps move each weight by ~1e-6, below half a bf16 ulp for most weights
    assert share_pure < 0.2 and share_mixed > 0.95, (share_pure, share_mixed)


def test_bf16_mixed_generator_samples_with_a_bf16_copy(tiny_checkpoint):
    policy = Policy.load(str(tiny_checkpoint), ModelSettings(precision="bf16-mixed"), torch.device("cpu"))
    generator = Generator("fast", policy.model, policy.tokenizer, dtype=policy.compute_dtype)
    assert generator.engine.compact.weights["embed"].dtype == torch.bfloat16
    assert next(policy.model.parameters()).dtype == torch.float32
