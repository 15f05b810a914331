"""Sharded data parallelism with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``): ``parallel: fsdp2``.

Every decoder layer is one FSDP unit and the rest of the model (embeddings, final norm, LM head) the root unit, so a
rank holds 1/N of the weights, gradients and AdamW state and gathers one layer's weights at a time for its forward
and backward (Zhao et al., "PyTorch FSDP", arXiv 2304.11277). Under ``precision: bf16-mixed`` the gathered weights
are bf16 for compute while gradients are reduced in fp32 and the sharded master weights and optimizer stay fp32.

How r1lab uses it, and why:
- gradients are *summed* over ranks (divide factor 1): every trainer already weights each rank's loss by its share of
  the global token or row count, as under DDP, so both wrappings give the one-process gradient;
- the decoder-then-LM-head path of ``completion_logprobs`` (the head on completion positions only) is registered as
  a forward method of the root unit, so the root's weights are gathered for it and its gradients reduced;
- ranks must run the same number of forward and backward passes (each gathers weights with the others): the RL
  trainers split by equal shares; the trainers over fixed data add empty passes where a rank has fewer
  micro-batches (``passes_to_match``);
- the generator cannot sample with sharded weights: the policy keeps a plain full copy for sampling and saving,
  refreshed from the shards after every optimizer step (``full_state_dict``); checkpoints hold the full optimizer
  state, so a run resumes at any number of processes.
"""

from __future__ import annotations

import types

import torch

from r1lab.dist import world
from r1lab.logprobs import decoder_then_head_logprobs


def shard_model(model, *, mixed_precision: bool) -> None:
    """Wrap ``model`` (a Hugging Face causal LM, in place) with ``fully_shard``: one unit per decoder layer, the root
    for the rest; ``completion_logprobs`` becomes one of the root's forward methods."""
    layers = getattr(model.get_decoder(), "layers", None)
    if layers is None:
        raise ValueError(f"parallel: fsdp2 needs a decoder with a `layers` list; {type(model).__name__} has none")
    model.r1lab_completion_logprobs = types.MethodType(decoder_then_head_logprobs, model)
    _shard(model, layers, mixed_precision, "r1lab_completion_logprobs")


def shard_value_model(value_model, *, mixed_precision: bool) -> None:
    """The same for a value model (``r1lab.value_model.ValueModel``: PPO's critic, a reward model): one unit per
    layer of its backbone, the root for the rest and the head; ``values`` becomes one of the root's forward methods."""
    layers = getattr(value_model.backbone, "layers", None)
    if layers is None:
        raise ValueError(f"parallel: fsdp2 needs a backbone with a `layers` list; "
                         f"{type(value_model.backbone).__name__} has none")
    _shard(value_model, layers, mixed_precision, "values")


# the FSDP2 calls r1lab needs that older torch releases lack (both arrived in torch 2.8)
_NEEDED_FSDP_METHODS = ("set_gradient_divide_factor", "set_force_sum_reduction_for_comms")


def missing_fsdp2_methods() -> list[str]:
    """What ``parallel: fsdp2`` needs that this torch's FSDP2 lacks (empty from torch 2.8 on)."""
    from torch.distributed.fsdp import FSDPModule

    return [name for name in _NEEDED_FSDP_METHODS if not hasattr(FSDPModule, name)]


def check_fsdp2_support() -> None:
    """Raise a clear error when this torch's FSDP2 lacks what ``parallel: fsdp2`` needs (torch < 2.8)."""
    missing = missing_fsdp2_methods()
    if missing:
        raise RuntimeError(f"parallel: fsdp2 needs torch 2.8 or newer (FSDP2's {', '.join(missing)}); this is torch "
                           f"{torch.__version__}: upgrade torch, or use parallel: ddp")


def _shard(root, layers, mixed_precision: bool, forward_method: str) -> None:
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

    check_fsdp2_support()
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision
              else MixedPrecisionPolicy())
    units = [fully_shard(layer, mp_policy=policy) for layer in layers]
    units.append(fully_shard(root, mp_policy=policy))
    for unit in units:  # the trainers' losses are shares of the global ones: sum, do not average
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    register_fsdp_forward_method(root, forward_method)


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """Every weight of a sharded ``model`` gathered whole, on every rank (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(model, optimizer) -> dict:
    """The optimizer's state gathered whole and keyed by parameter name (the same at any number of ranks); every
    rank calls it, every rank gets it. ``model``: every module whose parameters the optimizer holds."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                              cpu_offload=False))


def load_full_optimizer_state(model, optimizer, state: dict) -> None:
    """Give every rank its shard of a state written by ``full_optimizer_state`` (at any number of ranks)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))


def matching_passes(model, passes: int) -> int:
    """Empty passes to add after this rank's ``passes`` forward (and backward) passes of ``model``: none unless it
    is sharded, which needs every rank to run as many as the busiest one."""
    return passes_to_match(passes) if is_sharded(model) else 0


def passes_to_match(passes: int) -> int:
    """How many empty forward/backward passes this rank adds so that every rank runs as many as the busiest."""
    if not world().distributed:
        return 0
    import torch.distributed as torch_dist

    most = torch.tensor([passes], dtype=torch.int64)
    torch_dist.all_reduce(most, op=torch_dist.ReduceOp.MAX)
    return int(most.item()) - passes
