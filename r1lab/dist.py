"""Several processes under ``torchrun``: which one this is, and the few collectives r1lab needs.

``torchrun --nproc-per-node N -m r1lab run recipe.yaml`` starts N copies of the same command; each finds its rank
and the world size in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...)
and joins one process group: ``nccl`` when it has a GPU, ``gloo`` on CPUs. Every collective has a timeout
(``R1LAB_DIST_TIMEOUT`` seconds, default 600), so a rank that dies makes the others fail instead of waiting forever;
torchrun then ends the whole job. Without ``WORLD_SIZE`` (or with 1) nothing here does anything: one process is the
default and pays nothing.

How the work is split (README, "Many processes"): the RL trainers split a step's prompts by whole groups (each rank
samples the G completions of its own prompts, so group advantages never cross ranks), divide their losses by the
global token or sequence count, and sum gradients over ranks before every optimizer step; every other stage runs
whole on every rank (same seeds, same results). Rank 0 shows progress and writes the run folder; the other ranks
write theirs in a scratch folder beside it (``<output_dir>/.rank<r>/<name>``) that they delete when the run ends.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_world = World()


def world() -> World:
    """This process's place among the processes of the run (rank 0 of 1 when not under torchrun)."""
    return _world


def init_from_env(device_name: str = "auto", *, need_group: bool = False) -> World:
    """Join the process group torchrun describes in the environment (once); returns this process's ``World``.
    ``need_group``: a group even for one process (FSDP2 shards over a group, of one rank when not under torchrun)."""
    global _world
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if (size <= 1 and not need_group) or _world.distributed:
        return _world
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    gpu = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if gpu:
        torch.cuda.set_device(local_rank)
    if not torch_dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get("R1LAB_DIST_TIMEOUT", "600")))
        backend = "nccl" if gpu else "gloo"
        if "MASTER_ADDR" in os.environ:  # torchrun's rendezvous
            torch_dist.init_process_group(backend, timeout=timeout)
        else:  # a plain process: a group of one, in memory
            torch_dist.init_process_group(backend, store=torch_dist.HashStore(), rank=0, world_size=1,
                                          timeout=timeout)
    _world = World(rank, size, local_rank)
    return _world


def shard(count: int, what: str = "items") -> tuple[int, int]:
    """This rank's [start, stop) of ``count`` items split in equal contiguous parts; ``count`` must divide evenly
    (equal parts keep every rank's number of micro-batches, and so its collectives, in step)."""
    w = world()
    if count % w.world_size:
        raise ValueError(f"{count} {what} cannot be split evenly over {w.world_size} processes: make it a multiple "
                         f"of the number of processes")
    part = count // w.world_size
    return w.rank * part, (w.rank + 1) * part


def share(count: int) -> tuple[int, int]:
    """This rank's [start, stop) of ``count`` items cut in contiguous parts whose sizes differ by at most one
    (a rank may get none): how the trainers over a fixed data set split a step's examples."""
    w = world()
    base, extra = divmod(count, w.world_size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (1 if w.rank < extra else 0)


def sum_stats_over_ranks(stats: dict[str, float]) -> dict[str, float]:
    """Each key summed over ranks (a rank without a key counts 0), in rank order so every rank gets the same
    floats; ``stats`` itself in one process. For stats already weighted by each rank's share of a global count."""
    if not world().distributed:
        return stats
    summed: dict[str, float] = {}
    for part in all_gather_objects({k: float(v) for k, v in stats.items()}):
        for key, value in part.items():
            summed[key] = summed.get(key, 0.0) + value
    return summed


def broadcast_from_main(obj):
    """Rank 0's ``obj`` on every rank (picklable); ``obj`` in one process."""
    if not world().distributed:
        return obj
    box = [obj]
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (nothing to do in one process)."""
    if world().distributed:
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
    return tensor


def sum_over_ranks(value: float) -> float:
    return all_reduce_sum(torch.tensor([float(value)], dtype=torch.float64)).item() if world().distributed else value


def all_gather_objects(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order; [obj] in one process."""
    if not world().distributed:
        return [obj]
    gathered = [None] * world().world_size
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``parameters`` over ranks, as one flat buffer (one collective per optimizer step).
    Every rank holds the same parameters in the same order; a parameter without a gradient counts as zeros."""
    if not world().distributed or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    all_reduce_sum(flat)
    offset = 0
    for p, g in zip(parameters, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(g).to(g.dtype)
        offset += n


def broadcast_parameters(parameters: list[torch.nn.Parameter]) -> None:
    """Every rank starts from rank 0's values of ``parameters`` (as DDP does when it wraps a model): a part drawn
    at random on each rank, such as a new value head, is then the same everywhere."""
    if not world().distributed:
        return
    with torch.no_grad():
        for p in parameters:
            torch_dist.broadcast(p.data, src=0)


def barrier() -> None:
    if world().distributed:
        torch_dist.barrier()
