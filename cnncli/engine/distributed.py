"""DistributedDataParallel helpers: PyTorch's own engine, launched by `torchrun`.

`setup()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...), initialises the process
group (NCCL on CUDA, gloo on CPU) with a timeout so a failing rank ends the job instead of hanging it, and picks
this rank's device. Without torchrun everything here is a no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnncli.errors import UsageError

TIMEOUT = datetime.timedelta(seconds=int(os.environ.get("CNN_DIST_TIMEOUT", "300")))


@dataclass
class DistInfo:
    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None


def setup(device: str = "auto") -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if want_cuda:
        if not torch.cuda.is_available():
            raise UsageError("CUDA is not available for this torchrun job", "use --device cpu (gloo)")
        torch.cuda.set_device(local)
        dev, backend = torch.device("cuda", local), "nccl"
    else:
        dev, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    return DistInfo(True, rank, world, local, dev)


def teardown(finished: bool = False) -> None:
    """Leave the process group. A job that `finished` waits for every rank first: a rank that destroyed its group
    while rank 0 still wrote the run's summary could die in gloo's threads at exit (SIGABRT, "terminate called
    without an active exception"). After an error no rank waits (the others may never come: torchrun ends them)."""
    if dist.is_available() and dist.is_initialized():
        if finished and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def _on() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sums(values: list[float], device) -> list[float]:
    """Sum a few numbers across ranks (metrics)."""
    if not _on():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_flag(flag: bool, device) -> bool:
    """True on every rank if it is true on any (a signal seen by one rank stops all at the same step)."""
    if not _on():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def broadcast_str(value: str) -> str:
    """Rank 0's string on every rank (the run folder)."""
    if not _on():
        return value
    obj = [value]
    dist.broadcast_object_list(obj, src=0)
    return obj[0]


def broadcast_model(model: torch.nn.Module) -> None:
    if not _on():
        return
    for t in model.state_dict().values():
        dist.broadcast(t, src=0)
