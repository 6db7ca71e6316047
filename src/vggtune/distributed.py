"""Several processes, one job: torchrun's environment, the process group, each rank's share of
the work, and the few collectives the rest of vggtune calls.

`torchrun --nproc-per-node N -m vggtune train ...` starts N processes and gives each RANK,
WORLD_SIZE, LOCAL_RANK and a rendezvous; `vggtune train --nproc N` starts the same on one
host (launcher.py). A process started without them is a world of one, and every function here is then a
no-op, so the one-process path runs the code it always ran.

What is shared, and how:
- the work: `share(items)` is this rank's positions r, r+N, r+2N, ... of a list every rank
  holds in the same order; `gather(values)` puts the shares back in the list's order;
- files: the feature cache takes many writers (cache.py), so ranks fill it side by side; the
  run folder is written by rank 0 alone (`is_main`); both must be on a filesystem every host sees;
- training: `wrap` is DistributedDataParallel (gloo on CPU, NCCL on CUDA).

Every collective has a timeout (VGGTUNE_DIST_TIMEOUT seconds, default 1800), so a rank that
dies or hangs ends the job with an error instead of a wait without end.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from vggtune.launcher import launched_size

DEFAULT_TIMEOUT_S = 1800


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"


_world = World()


def world() -> World:
    return _world


def is_main() -> bool:
    return _world.main


def timeout() -> timedelta:
    return timedelta(seconds=float(os.environ.get("VGGTUNE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))


def join(device: str = "auto") -> World:
    """Joins torchrun's process group, if torchrun started this process and it has not joined yet,
    and stays in it until the process ends: what the Python API calls, so that a script run by
    torchrun that calls `vggtune.train` needs nothing else."""
    global _world
    if launched_size() <= 1 or dist.is_initialized():
        return _world
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timeout())
    _world = World(dist.get_rank(), dist.get_world_size(), local_rank)
    atexit.register(_leave)
    return _world


@contextlib.contextmanager
def joined(device: str = "auto"):
    """Inside: this process is one rank of torchrun's job (a world of one without torchrun)."""
    yield join(device)
    # Only after a clean end: a group whose peer died may not take part in its own shutdown. The ranks
    # leave together: one that tore its group down while rank 0 still wrote the run aborted in gloo's
    # threads ("terminate called without an active exception", SIGABRT) on an AMD EPYC here.
    barrier()
    _leave()


def _leave() -> None:
    global _world
    if dist.is_initialized():
        dist.destroy_process_group()
    _world = World()


@contextlib.contextmanager
def alone():
    """Inside: this process is a world of one, for work that one rank does by itself (rank 0 writing the
    report). Every function here is then a no-op, so nothing inside can start a collective the other
    ranks never join: such a call waited until the job's timeout (the hang of issue #38)."""
    global _world
    saved, _world = _world, World()
    try:
        yield
    finally:
        _world = saved


def share(items):
    """This rank's part of `items`: every size-th one from its rank on (interleaved, so work that
    is partly done already, such as a cache filled up to some point, stays evenly divided)."""
    return items[_world.rank :: _world.size]


def gather(values: list) -> list:
    """Every rank's `share` results, back in the order of the list they were shared from."""
    if _world.size == 1:
        return list(values)
    parts = _all_objects(list(values))
    total = sum(len(part) for part in parts)
    return [parts[i % _world.size][i // _world.size] for i in range(total)]


def concat(values: list) -> list:
    """Every rank's list, one after another in rank order."""
    if _world.size == 1:
        return list(values)
    return [value for part in _all_objects(list(values)) for value in part]


def total(*numbers: float) -> list[float]:
    """The sums over ranks of a few numbers."""
    if _world.size == 1:
        return list(numbers)
    summed = torch.tensor(numbers, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return summed.tolist()


def from_main(value):
    """Rank 0's `value`, on every rank."""
    if _world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return box[0]


def barrier() -> None:
    if _world.size > 1:
        dist.barrier()


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the ranks (gradients averaged after each backward), or the module itself."""
    if _world.size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index if device.index is not None else _world.local_rank] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def _all_objects(value) -> list:
    parts = [None] * _world.size
    dist.all_gather_object(parts, value)
    return parts


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
