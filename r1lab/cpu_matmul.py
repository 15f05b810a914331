"""fp32 linear layers on a CPU through oneDNN where it is faster than the BLAS that PyTorch calls.

PyTorch multiplies fp32 matrices on a CPU with MKL, which on some processors runs well below what the cores can do:
on 2 cores of an AMD EPYC (Zen 5, AVX-512) oneDNN, which PyTorch also ships, is two to three times faster for the
products of a small model's training and decoding (a 656 × 512 × 1,536 product: 4.6 ms through MKL, 2.1 ms through
oneDNN; ``python bench/cpu_matmul.py``). Where MKL is at its best the two are close. So r1lab measures both once per
process (about 50 ms) and takes oneDNN only where it pays:

    R1LAB_CPU_MATMUL=auto     # default: measure, then choose
    R1LAB_CPU_MATMUL=onednn   # always oneDNN (where PyTorch has it)
    R1LAB_CPU_MATMUL=blas     # never: PyTorch's own F.linear

``route_linear_layers(model)`` makes a model's ``nn.Linear`` layers use it (forward and both products of the
backward pass); ``pack`` / ``packed_linear`` serve the rollout engine's decode step, whose weights are reordered once
for a fixed number of rows. Results agree with F.linear within fp32 rounding (the sums run in another order).
A routed layer falls back to F.linear for anything but plain fp32 CPU tensors outside autocast (a model moved to a
GPU, bf16, a sharded weight), so routing never changes what runs elsewhere.
"""

from __future__ import annotations

import functools
import logging
import os
import time
import types

import torch
import torch.nn.functional as F

log = logging.getLogger("r1lab")

MODE_ENV = "R1LAB_CPU_MATMUL"
MODES = ("auto", "onednn", "blas")
# oneDNN is taken in `auto` mode when it needs at most this share of MKL's time (a margin over timing noise)
PAYS_BELOW = 0.8


def onednn_available() -> bool:
    """PyTorch was built with oneDNN and exposes its linear operator."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops, "mkldnn")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise") and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"))


def _mode() -> str:
    mode = os.environ.get(MODE_ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={mode!r} is not one of {', '.join(MODES)}")
    return mode


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def _seconds(fn, repeats: int) -> float:
    fn()  # the first call builds oneDNN's kernel for the shape
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def measure() -> dict[str, float]:
    """Seconds of a training-sized and a decode-sized fp32 product through MKL (F.linear, MKL-packed) and oneDNN
    (plain, packed), each the best of several; the decision of ``onednn_pays``."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1536, 512, generator=generator)
    big, small = torch.randn(256, 512, generator=generator), torch.randn(16, 512, generator=generator)
    times = {"blas_train": _seconds(lambda: F.linear(big, weight), 5),
             "onednn_train": _seconds(lambda: _onednn(big, weight, None), 5)}
    onednn_packed = torch.ops.mkldnn._reorder_linear_weight(weight, 16)
    times["onednn_decode"] = _seconds(lambda: _onednn(small, onednn_packed, None), 20)
    if torch._C.has_mkl and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight"):
        mkl_packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 16)
        times["blas_decode"] = _seconds(lambda: torch.ops.mkl._mkl_linear(small, mkl_packed, weight, None, 16), 20)
    else:
        times["blas_decode"] = _seconds(lambda: F.linear(small, weight), 20)
    return times


_choice = ""  # what onednn_pays decided and why, for ``choice()``


def choice() -> str:
    """A line for the user: which library multiplies fp32 matrices on the CPU in this process, and why."""
    pays = onednn_pays()
    return _choice or ("oneDNN" if pays else "MKL")


@functools.cache
def onednn_pays() -> bool:
    """Whether this process multiplies fp32 matrices on the CPU through oneDNN (``R1LAB_CPU_MATMUL``; in ``auto``
    mode measured once: oneDNN at most 0.8 of MKL's time for both a training and a decode product)."""
    global _choice
    mode = _mode()
    if mode == "blas" or not onednn_available():
        _choice = (f"MKL ({MODE_ENV}=blas)" if mode == "blas" else
                   "MKL (this PyTorch has no oneDNN linear operator)")
        log.info(f"cpu matmul: {_choice}")
        return False
    if mode == "onednn":
        _choice = f"oneDNN ({MODE_ENV}=onednn)"
        return True
    try:
        with torch.inference_mode():
            times = measure()
    except RuntimeError as error:  # a oneDNN that cannot build its kernels on this CPU: MKL, and say why
        _choice = f"MKL (oneDNN failed on this CPU: {error})"
        log.info(f"cpu matmul: {_choice}")
        return False
    pays = (times["onednn_train"] <= PAYS_BELOW * times["blas_train"]
            and times["onednn_decode"] <= PAYS_BELOW * times["blas_decode"])
    _choice = (f"{'oneDNN' if pays else 'MKL'}, the faster here (a training product {times['blas_train'] * 1e3:.2f} ms "
               f"MKL, {times['onednn_train'] * 1e3:.2f} ms oneDNN; a decode product {times['blas_decode'] * 1e6:.0f} "
               f"µs MKL, {times['onednn_decode'] * 1e6:.0f} µs oneDNN; {MODE_ENV}=blas or onednn to choose)")
    log.info(f"cpu matmul: {_choice}")
    return pays


def _plain_cpu_fp32(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or (type(t) in (torch.Tensor, torch.nn.Parameter) and t.device.type == "cpu"
                             and t.dtype == torch.float32) for t in tensors)


class _OneDNNLinear(torch.autograd.Function):
    """y = x Wᵀ + b for 2-D x, all three products through oneDNN: y, ∂x = g W, ∂W = gᵀ x."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_weight = grad_bias = None
        # oneDNN takes the second factor as (out, in) and reads transposed views in place (no copies)
        if ctx.needs_input_grad[0]:  # (M, N) (N, K)
            grad_x = _onednn(grad, weight.t(), None)
        if ctx.needs_input_grad[1]:  # (N, M) (M, K)
            # oneDNN copies its first factor when it is a transposed view: transpose the narrower of the two
            # (a 1792 × 128 by 1792 × 512 product: 0.79 ms against 1.33 ms; the same sums, the same bits)
            if x.shape[1] < grad.shape[1]:
                grad_weight = _onednn(x.t(), grad.t(), None).t().contiguous()
            else:
                grad_weight = _onednn(grad.t(), x.t(), None)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear through oneDNN for plain fp32 CPU tensors outside autocast, differentiable; F.linear otherwise."""
    if not _plain_cpu_fp32(x, weight, bias) or torch.is_autocast_enabled("cpu") or x.shape[-1] == 0:
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return _OneDNNLinear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


def _routed_forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return linear(x, self.weight, self.bias)


def route_linear_layers(model: torch.nn.Module) -> int:
    """Make the model's ``nn.Linear`` layers (LoRA's included) multiply through oneDNN when ``onednn_pays()``;
    returns how many were routed (0 when it does not pay or the model is not fp32 on a CPU). The layers keep their
    parameters and state dict; a deep copy of the model stays routed to its own weights."""
    parameter = next(model.parameters(), None)
    if parameter is None or not _plain_cpu_fp32(parameter) or not onednn_pays():
        return 0
    routed = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear and "forward" not in vars(module):
            module.forward = types.MethodType(_routed_forward, module)
            routed += 1
    return routed


def is_routed(module: torch.nn.Module) -> bool:
    """This linear layer multiplies through r1lab's oneDNN route."""
    forward = vars(module).get("forward")
    return getattr(forward, "__func__", None) is _routed_forward


def pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """The weight (out, in) reordered by oneDNN for products with ``rows`` rows (for ``packed_linear``)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x (rows, in) times a ``pack``-ed weight, plus bias: no autograd (the engine's decode step)."""
    return _onednn(x, packed, bias)
