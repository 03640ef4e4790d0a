"""The CPU thread policy, in one place: how many cores this process may use, and how they are shared between
PyTorch's intra-op threads, its inter-op pool and the DataLoader workers, so that together they never ask for
more cores than there are.

torch's CPU kernels run on OpenMP (the pip wheels ship GNU libgomp: `torch.__config__.parallel_info()`). By default
libgomp's idle threads spin for a while before they sleep, which on a busy machine steals the cores the work
needs; `prepare_environment()` sets the passive wait policy (OMP_WAIT_POLICY=PASSIVE) before torch is imported,
unless the user set one. Worker processes run one thread each (PyTorch's DataLoader sets that in its workers).

The cores: the CPU affinity mask (`os.sched_getaffinity`), capped by a cgroup CPU quota (containers, CI runners:
cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), shared equally by the processes of a torchrun job on this node.
`--threads N` or `CNN_THREADS=N` sets the intra-op threads instead (a positive integer).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from cnncli.config import THREADS_ENV as ENV
from cnncli.config import parse_threads


def prepare_environment() -> None:
    """Before torch is imported: OpenMP threads that sleep when idle instead of spinning. A user's own wait
    policy (OMP_WAIT_POLICY, or libgomp's GOMP_SPINCOUNT) wins."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _quota() -> float | None:
    """The cgroup CPU quota in cores (None: no quota)."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota_us = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period_us = int(f.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The cores this process may run on: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def processes_per_node() -> int:
    """How many processes of one job share this machine's cores (torchrun sets LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True)
class ThreadPlan:
    intra: int  # torch.set_num_threads
    workers: int  # DataLoader worker processes (one thread each)
    cores: int  # what this process may use
    chosen_by: str  # "auto", "--threads", "CNN_THREADS"

    def describe(self) -> str:
        workers = f", {self.workers} data worker{'s' if self.workers != 1 else ''}" if self.workers else ""
        how = "" if self.chosen_by == "auto" else f" ({self.chosen_by})"
        return f"{self.intra} thread{'s' if self.intra != 1 else ''}{how}{workers} on {self.cores} core(s)"


def plan(threads: int | None = None, workers: int | None = None, *, streams_files: bool = False) -> ThreadPlan:
    """Intra-op threads and DataLoader workers for this process. `threads` (--threads) or CNN_THREADS decide the
    threads; `workers` (--workers) the workers. Otherwise: a process that reads image files from disk gives one core
    to a worker when it has two or more, and the rest to the model; every other process gives the model all of
    its share of the cores."""
    cores = max(1, usable_cores() // processes_per_node())
    chosen_by = "auto"
    env = parse_threads(os.environ.get(ENV), ENV)
    if threads is not None:
        chosen_by = "--threads"
    elif env is not None:
        threads, chosen_by = env, ENV
    if workers is None:
        workers = (1 if cores >= 2 else 0) if streams_files else 0
        if streams_files and threads is None:
            workers = max(workers, min(8, cores // 2))  # decoding keeps up with the model on larger machines
    if threads is None:
        threads = max(1, cores - workers)
    return ThreadPlan(threads, workers, cores, chosen_by)


def apply(p: ThreadPlan) -> None:
    """Set torch's intra-op threads, and its inter-op pool to one thread (cnn runs one graph at a time) where the
    pool has not started yet."""
    import torch

    torch.set_num_threads(p.intra)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (a second command in the same process): it stays as it is
        pass
