"""The policy: the trainable model and everything every trainer needs around it.

One object owns the model and its tokenizer, the reference policy of the KL penalty, the optimizer and its
learning-rate schedule, gradient clipping, micro-batched forward/backward, per-token logprobs, and saving, loading
and resuming. Trainers (r1lab/train/*.py) keep only their algorithm; data-parallel or sharded wrapping and mixed
precision belong here and nowhere else.

    policy = Policy.load(init, settings, device, resume_from=stage.checkpoint_dir)
    policy.attach_reference(kl_coef > 0)                      # frozen copy, adapters off under LoRA, or none
    policy.configure_optimizer(OptimizerSettings(lr=1e-4, ...), schedule=warmup_from_zero_then_decay(200, 5, "cosine"))
    stats = policy.backward(batch, rows, loss_fn, micro_batch_size=8, weight_by="tokens")
    policy.optimizer_step()                                    # clip, AdamW, tell the generators
    policy.schedule_step()
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch

from r1lab.checkpoint import atomic_dir, load_training_state, save_training_state, set_rng_state
from r1lab.cpu_matmul import route_linear_layers
from r1lab.dist import all_reduce_gradients, all_reduce_sum, broadcast_parameters, sum_over_ranks, world
from r1lab.fsdp import full_optimizer_state, full_state_dict, is_sharded, load_full_optimizer_state, shard_model
from r1lab.lora import is_lora_model, load_lora_policy
from r1lab.logprobs import Batch, completion_logprobs
from r1lab.models import enable_activation_checkpointing, load_model, save_model, save_weights, write_tokenizer

LossFn = Callable[[torch.Tensor, Batch, torch.Tensor], "tuple[torch.Tensor, dict]"]


def _can_fuse(groups: list[dict]) -> bool:
    """AdamW's fused kernel (one pass over each tensor instead of about ten): 4.5x faster on a CPU for a 25M model
    (19 ms against 87 ms a step), and what transformers' Trainer uses by default. For floating-point tensors on a CPU
    or a CUDA GPU; other devices take the loop."""
    tensors = [p for group in groups for p in group["params"]]
    return bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)


def _item(value: torch.Tensor) -> float:
    """A scalar tensor's value; a DTensor (a norm over sharded gradients) is made whole first."""
    return (value.full_tensor() if hasattr(value, "full_tensor") else value).item()


# --- learning-rate schedules (a factor of the peak lr per schedule step) ----------------------------------------

def _decay(decay: str) -> Callable[[float], float]:
    """The factor at ``progress`` in [0, 1] of a decay to 10%: ``constant``, ``cosine`` or ``linear``."""
    if decay == "cosine":
        return lambda progress: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    if decay == "linear":
        return lambda progress: 1 - 0.9 * progress
    if decay == "constant":
        return lambda progress: 1.0
    raise ValueError(f"unknown learning-rate decay {decay!r}; choose constant, cosine or linear")


def warmup_then_decay(total_steps: int, warmup_steps: int, decay: str) -> Callable[[int], float]:
    """Linear warmup multiplied by a decay over ``total_steps`` to 10% at the end: ``constant`` (no decay),
    ``cosine`` or ``linear``. Pretraining uses it (the RL stages: ``warmup_from_zero_then_decay``)."""
    decayed = _decay(decay)

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, warmup_steps)) * decayed(min(1.0, step / max(1, total_steps)))

    return factor


def warmup_from_zero_then_decay(total_steps: int, warmup_steps: int, decay: str) -> Callable[[int], float]:
    """The RL stages' schedule, in transformers' convention (the one TRL's GRPOTrainer runs): the rate rises
    linearly from 0 at the first step, which only fills AdamW's moments, to the peak at step ``warmup_steps``, then
    decays over the remaining steps towards 10%: ``constant`` (no decay), ``cosine`` or ``linear``. On the embedded
    R1-Zero task, ten seeds each, it ended at held-out pass@1 0.991 on average where ``warmup_then_decay`` (a first
    step at 1/warmup of the peak, the decay counted from step 0) ended at 0.976 (README, "The rollout engine", the
    time to pass@1 0.9; ``bench/rl_schedule.py``)."""
    decayed = _decay(decay)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        return decayed(min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))

    return factor


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Linear warmup to 1, then cosine down to exactly ``min_ratio`` at the last step (R1's SFT: 5e-5 → 5e-6,
    DeepSeek-R1 arXiv 2501.12948 §2.3). The trainers over a fixed data set use it."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - 1 - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@dataclass
class OptimizerSettings:
    """One AdamW setup for every trainer; each trainer's config supplies the values."""

    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    extra_groups: list[dict] = field(default_factory=list)  # {"name", "params", "lr"}: e.g. PPO's value model


@dataclass
class ModelSettings:
    """How a policy is loaded: the run-wide settings a stage passes on."""

    dtype: str = "float32"
    precision: str = "full"  # "full": compute in dtype; "bf16-mixed": fp32 weights, bf16 compute (autocast)
    parallel: str = "ddp"  # under torchrun: "ddp" (whole model per rank) or "fsdp2" (sharded, r1lab.fsdp)
    gradient_checkpointing: bool = False
    lora: object = None  # r1lab.lora.LoraConfig, or None for full fine-tuning


class Policy:
    """The trainable model, its reference, optimizer, schedule and checkpoints."""

    def __init__(self, model, tokenizer, device: torch.device, *, init_checkpoint: str = "",
                 settings: ModelSettings | None = None, resume: dict | None = None):
        self.model = model
        route_linear_layers(model)  # fp32 on a CPU: oneDNN products where they beat MKL (r1lab.cpu_matmul)
        self.tokenizer = tokenizer
        self.device = device
        self.init_checkpoint = init_checkpoint  # where the stage started: the frozen reference after a resume
        self.settings = settings or ModelSettings()
        self.resume = resume  # training state of the checkpoint this policy resumes from, None when fresh
        self.reference = None  # a frozen model, or None (no KL, or adapters off under LoRA)
        self.reference_adapters_off = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.max_grad_norm = 0.0
        self._group_names: list[str] = []
        self._on_update: list[Callable[[], None]] = []
        self.updates = 0  # optimizer steps taken by this process
        self._reference_resettable = False
        self.sampler = None  # under fsdp2: a plain full copy of the weights for the generator and for saving
        self._optimizer_modules: dict[str, torch.nn.Module] = {}  # what the optimizer trains: its state's names
        if self.settings.parallel == "fsdp2" and not is_sharded(model):
            self.sampler = copy.deepcopy(model).eval().requires_grad_(False)
            shard_model(model, mixed_precision=self.mixed_precision)

    # --- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def load(cls, init_checkpoint: str, settings: ModelSettings, device: torch.device, *,
             resume_from: Path | None = None) -> "Policy":
        """The stage's starting model, or its last resumable checkpoint in ``resume_from`` when there is one
        (with LoRA: the base from ``init_checkpoint``, the adapter from ``resume_from/adapter``)."""
        resume = load_training_state(resume_from) if resume_from is not None else None
        lora = settings.lora
        if lora is not None and lora.enabled:
            model, tokenizer = load_lora_policy(settings, init_checkpoint, resume_from, device)
        else:
            has_weights = resume_from is not None and (Path(resume_from) / "config.json").is_file()
            source = str(resume_from) if has_weights else init_checkpoint
            model, tokenizer = load_model(source, dtype=settings.dtype, device=device)
            if settings.gradient_checkpointing:
                enable_activation_checkpointing(model)
        return cls(model, tokenizer, device, init_checkpoint=init_checkpoint, settings=settings, resume=resume)

    @property
    def sharded(self) -> bool:
        """The policy is sharded with FSDP2 (``parallel: fsdp2``; a value model trained as the policy, sharded by its
        trainer, counts too)."""
        return is_sharded(self.model)

    @property
    def sampling_model(self):
        """The model the generator samples with and the saved weights come from: the policy itself, or under fsdp2
        its full copy, refreshed after every optimizer step."""
        return self.sampler if self.sampler is not None else self.model

    @property
    def resume_step(self) -> int:
        """The step to continue from: 0 for a fresh start."""
        return self.resume["step"] if self.resume else 0

    @property
    def resume_extra(self) -> dict:
        """What the trainer saved beside its state (``extra`` of ``save_checkpoint``); empty for a fresh start."""
        return self.resume["extra"] if self.resume else {}

    def attach_reference(self, enabled: bool, *, resettable: bool = False) -> None:
        """The reference policy π_ref of the KL penalty: none when not ``enabled`` (β = 0 loads nothing), the policy
        with its adapters switched off under LoRA (exactly the starting model, no second copy), else a frozen copy
        of the starting model (after a resume it is loaded again from the stage's init checkpoint, and a
        ``resettable`` reference, one that ``reset_reference`` moves, from the checkpoint's saved state)."""
        if not enabled:
            return
        if is_lora_model(self.model):
            self.reference_adapters_off = True
            return
        self.reference = (load_model(self.init_checkpoint, dtype=self.settings.dtype, device=self.device)[0]
                          if self.resume else copy.deepcopy(self.sampling_model))
        self.reference.eval().requires_grad_(False)
        route_linear_layers(self.reference)  # a deep copy is routed already; a loaded one is not
        if resettable and self.resume_extra.get("ref_state") is not None:
            self.reference.load_state_dict(self.resume_extra["ref_state"])
        if self.sharded:  # sharded like the policy, without an optimizer
            shard_model(self.reference, mixed_precision=self.mixed_precision)
        self._reference_resettable = resettable

    def reset_reference(self) -> bool:
        """Move the frozen reference to the current policy (R1 resets it every 400 steps). False when there is
        no frozen copy to move (no KL, or LoRA whose reference is the base)."""
        if self.reference is None:
            return False
        self.reference.load_state_dict(self.model.state_dict())  # under fsdp2: shard by shard, the same layout
        return True

    # --- optimizer and schedule ----------------------------------------------------------------------------------

    def configure_optimizer(self, settings: OptimizerSettings, schedule: Callable[[int], float]) -> None:
        """AdamW over the policy's parameters (and ``settings.extra_groups``), a LambdaLR ``schedule``; restores
        both, and the random number generators, from the checkpoint the policy resumes from."""
        if self.sharded:  # a forward before now (DPO's reference log-probs) left the root's weights gathered
            self.model.reshard()
        groups = [{"params": list(self.model.parameters()), "lr": settings.lr}]
        self._group_names = ["policy"]
        self._optimizer_modules = {"policy": self.model}
        for group in settings.extra_groups:
            groups.append({"params": list(group["params"]), "lr": group["lr"]})
            self._group_names.append(group["name"])
            if "module" in group:  # e.g. PPO's critic: its optimizer state is saved by parameter name too
                self._optimizer_modules[group["name"]] = group["module"]
        if not self.sharded:  # under torchrun: every rank starts from rank 0's values (fsdp2: loaded alike, sharded)
            broadcast_parameters([p for group in groups for p in group["params"]])
        params = groups[0]["params"] if len(groups) == 1 else groups
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay,
                                           betas=tuple(settings.betas), fused=_can_fuse(groups))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.max_grad_norm = settings.max_grad_norm
        if self.resume:
            by_name = bool(self.resume_extra.get("optimizer_by_name"))
            if by_name != self.sharded:
                raise ValueError(f"this checkpoint was written with parallel: {'fsdp2' if by_name else 'ddp'}; "
                                 f"resume it with the same parallel setting")
            if self.sharded:  # the whole state, keyed by parameter name: each rank takes its shard
                load_full_optimizer_state(self._optimized_modules(), self.optimizer, self.resume["optimizer"])
            else:
                self.optimizer.load_state_dict(self.resume["optimizer"])
            self.scheduler.load_state_dict(self.resume["scheduler"])
            set_rng_state(self.resume["rng"])

    def learning_rates(self) -> dict[str, float]:
        """The learning rate of each parameter group now: {"lr": policy's, "<group>_lr": others'}."""
        rates = self.scheduler.get_last_lr()
        return {("lr" if name == "policy" else f"{name}_lr"): rate for name, rate in zip(self._group_names, rates)}

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def optimizer_step(self) -> dict[str, float]:
        """Clip the gradient norm over every trained parameter (when max_grad_norm > 0), take an AdamW step and
        tell the generators that sample with these weights. Returns the norm before clipping per group
        ("grad_norm" for the policy, "<group>_grad_norm" for the others; 0 when not clipping one group)."""
        norms: dict[str, float] = {}
        all_params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if not self.sharded:  # fsdp2 summed them in backward
            all_reduce_gradients(all_params)  # under torchrun: each rank's loss was a share of the global one; sum
        if len(self._group_names) > 1:  # one norm per group for the log, then one clip over all of them
            for name, group in zip(self._group_names, self.optimizer.param_groups):
                grads = [p.grad.detach() for p in group["params"] if p.grad is not None]
                norm = _item(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
                norms["grad_norm" if name == "policy" else f"{name}_grad_norm"] = norm
            if self.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(all_params, self.max_grad_norm)
        else:
            norms["grad_norm"] = (_item(torch.nn.utils.clip_grad_norm_(all_params, self.max_grad_norm))
                                  if self.max_grad_norm > 0 else 0.0)
        self.optimizer.step()
        self.updates += 1
        if self.sampler is not None:  # the generator's full copy follows the shards
            self.sampler.load_state_dict(full_state_dict(self.model))
        for notify in self._on_update:
            notify()
        return norms

    def schedule_step(self) -> None:
        """Advance the learning-rate schedule (once per RL step, or once per optimizer step in SFT)."""
        self.scheduler.step()

    def on_update(self, callback: Callable[[], None]) -> None:
        """``callback`` runs after every optimizer step (a generator refreshes its copy of the weights)."""
        self._on_update.append(callback)

    # --- forward and backward ------------------------------------------------------------------------------------

    @property
    def mixed_precision(self) -> bool:
        return self.settings.precision == "bf16-mixed"

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype forward passes compute in when it differs from the weights' (bf16 under bf16-mixed), else None:
        what the generator samples with."""
        return torch.bfloat16 if self.mixed_precision else None

    def autocast(self):
        """The context every forward pass of the policy (and of models trained beside it) runs in: bf16 autocast
        over fp32 weights under ``precision: bf16-mixed`` (Micikevicius et al., arXiv 1710.03740: the weights and
        AdamW's state stay fp32, so an update of 1e-6 relative size is not rounded away as in pure bf16)."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def logprobs(self, batch: Batch, *, with_entropy: bool = False):
        """Per-token logprobs (B, C) of the completion tokens under the policy (and entropy when asked)."""
        with self.autocast():
            return completion_logprobs(self.model, batch, with_entropy=with_entropy)

    @torch.no_grad()
    def reference_logprobs(self, batch: Batch) -> torch.Tensor | None:
        """Per-token logprobs (B, C) under π_ref, None without a reference."""
        with self.autocast():
            if self.reference_adapters_off:
                with self.model.disable_adapter():
                    return completion_logprobs(self.model, batch)[0]
            if self.reference is None:
                return None
            return completion_logprobs(self.reference, batch)[0]

    def backward(self, batch: Batch, rows: torch.Tensor, loss_fn: LossFn, *, micro_batch_size: int = 0,
                 weight_by: Literal["tokens", "sequences"] = "tokens", name: str = "loss") -> dict[str, float]:
        """Accumulate the gradient of one minibatch (``rows`` of ``batch``) in micro-batches of
        ``micro_batch_size`` sequences (0: one pass).

        ``loss_fn(micro_rows, micro_batch, logprobs)`` returns (loss, stats) for a micro-batch; each micro-batch's
        loss and stats are weighted by its share of the minibatch's completion tokens (``weight_by="tokens"``, for
        a token-mean loss) or sequences (for a sequence-mean loss), so the gradient is that of the whole minibatch
        in one pass, however it is split. Returns the weighted stats plus "loss" and "entropy" (token mean).
        A loss that is not finite stops training with an error naming ``name``.
        """
        # under torchrun the minibatch is every rank's rows: weights are shares of the global token or row count
        minibatch_tokens = max(sum_over_ranks(batch.completion_mask[rows].sum().item()), 1.0)
        minibatch_rows = sum_over_ranks(len(rows))
        totals: dict[str, float] = {}
        entropy_sum = 0.0
        for micro in rows.split(micro_batch_size or len(rows)):
            part = batch.select(micro)
            mask = part.completion_mask
            weight = (mask.sum().item() / minibatch_tokens if weight_by == "tokens"
                      else torch.tensor(len(micro) / minibatch_rows).item())
            logprobs, entropy = self.logprobs(part, with_entropy=True)
            with self.autocast():  # a critic's forward inside the loss runs at the policy's precision too
                loss, stats = loss_fn(micro, part, logprobs)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{name} is {loss.item()} ({stats}): lower the learning rate or check the "
                                         f"rewards")
            (loss * weight).backward()
            entropy_sum += (entropy * mask).sum().item()
            for key, value in {"loss": loss.item(), **stats}.items():  # loss_fn may report a part as "loss"
                totals[key] = totals.get(key, 0.0) + weight * value
        totals["entropy"] = entropy_sum / minibatch_tokens  # token mean over the minibatch
        if world().distributed:  # each rank's totals are its share of the global ones
            keys = sorted(totals)
            summed = all_reduce_sum(torch.tensor([totals[k] for k in keys], dtype=torch.float64))
            totals = dict(zip(keys, summed.tolist()))
        return totals

    def train(self) -> None:
        self.model.train()

    # --- saving --------------------------------------------------------------------------------------------------

    def save_checkpoint(self, folder: Path, step: int, *, extra: dict | None = None,
                        write_more: Callable[[Path], None] | None = None) -> None:
        """A resumable checkpoint in ``folder``: weights (merged under LoRA, with the adapter in ``adapter/``),
        tokenizer, and ``trainer_state.pt`` (optimizer, schedule, RNG, step, ``extra``; the frozen reference when
        it moves), renamed into place together. ``write_more(tmp)`` adds files inside the same rename. Under torchrun
        only rank 0 writes it (every rank holds the same state; a resume reads rank 0's, ``Stage.resume_dir``)."""
        extra = dict(extra or {})
        if self.reference is not None and self._reference_resettable:
            extra["ref_state"] = full_state_dict(self.reference) if self.sharded else self.reference.state_dict()
        optimizer_state = self._full_optimizer_state()
        if not world().is_main:
            if write_more is not None and self.sharded:  # what it writes is gathered from every rank first
                write_more(None)
            return
        with atomic_dir(folder) as tmp:
            save_weights(self.sampling_model, tmp)
            write_tokenizer(self.tokenizer, tmp)
            self.save_training_state(tmp, step, extra=extra, optimizer_state=optimizer_state)
            if write_more is not None:
                write_more(tmp)

    def save_training_state(self, folder: Path | None, step: int, *, extra: dict | None = None,
                            optimizer_state: dict | None = None) -> None:
        """``trainer_state.pt`` in ``folder`` (a checkpoint being written): optimizer, schedule, RNG, step, extra.
        Sharded, every rank calls it (the optimizer state is gathered whole unless ``optimizer_state`` is given);
        only rank 0 writes (``folder`` None: nothing to write on this rank)."""
        if optimizer_state is None:
            optimizer_state = self._full_optimizer_state()
        if folder is None or not world().is_main:
            return
        extra = {**(extra or {}), **({"optimizer_by_name": True} if self.sharded else {})}
        save_training_state(folder, optimizer=self.optimizer, scheduler=self.scheduler, step=step, extra=extra,
                            optimizer_state=optimizer_state)

    def _optimized_modules(self) -> torch.nn.Module:
        """The module(s) whose parameters the optimizer holds, for naming its state: the policy alone, or the
        policy and the modules of the extra groups side by side."""
        if len(self._optimizer_modules) <= 1:
            return self.model
        return torch.nn.ModuleDict(self._optimizer_modules)

    def _full_optimizer_state(self) -> dict | None:
        """Sharded: the optimizer's whole state by parameter name (a collective); else None (its own state_dict)."""
        return full_optimizer_state(self._optimized_modules(), self.optimizer) if self.sharded else None

    def save_final(self, folder: Path, info: dict | None = None) -> str:
        """The stage's result in Hugging Face format (loadable by transformers, servable by vLLM)."""
        save_model(self.sampling_model, self.tokenizer, folder, extra=info)
        return str(folder)
