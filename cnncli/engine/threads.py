"""The CPU thread policy, in one place: how many cores this process may use, how busy other work keeps them, and
how the rest is shared between PyTorch's intra-op threads and the DataLoader workers, so that together they never
ask for more cores than are free.

Measured (benchmarks/cpu_contention.py, 2 cores): on an idle machine, two OpenMP threads that spin while they wait
train the small models 1.5x faster than one thread; with one busy process per core, the same two threads are 10x
slower than one (each parallel region waits for the thread the scheduler took away), and telling OpenMP to sleep
instead of spinning only brings them back to 1.3x slower than one. So the policy looks before it starts: `cnn`
samples how much CPU other processes use (`/proc/stat`, over 0.2 s, on the cores this process may run on) before
torch is imported; on a busy machine it sets OpenMP's passive wait policy (OMP_WAIT_POLICY=PASSIVE: torch's pip
wheels ship GNU libgomp, `torch.__config__.parallel_info()`) and gives the model only the cores that are free.

The cores: the CPU affinity mask (`os.sched_getaffinity`), capped by a cgroup CPU quota (containers, CI runners:
cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us`), shared equally by the processes of a torchrun job on this node.
The ranks of a torchrun job take their share without sampling (they would count each other starting up).
`--threads N` or `CNN_THREADS=N` sets the intra-op threads instead; `--deterministic` uses every core whatever the
load (the same threads every time: a thread count changes the order of floating-point sums). The count a run
chose is saved in args.json, so `--resume` continues with it. Worker processes run one thread each (PyTorch's
DataLoader sets that), and torch's inter-op pool gets one thread (cnn runs one graph at a time).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

from cnncli.config import THREADS_ENV as ENV
from cnncli.config import parse_threads

LOAD_ENV = "CNN_CPU_LOAD"  # the sampled load, handed from `prepare_environment` to the plan (one sample a command)
PROBE_SECONDS = 0.2
BUSY = 0.5  # cores' worth of other work from which a core counts as taken
CGROUP_V2 = "/sys/fs/cgroup/cpu.max"
CGROUP_V1 = ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def prepare_environment(command: str | None = None) -> None:
    """Before torch is imported, for the commands that train (`cnn train`): sample the machine's load and, when
    other work keeps a core busy, set OpenMP's passive wait policy. A user's own wait policy (OMP_WAIT_POLICY,
    libgomp's GOMP_SPINCOUNT) wins."""
    if command != "train" or "torch" in sys.modules or processes_per_node() > 1:
        return  # under torchrun the ranks would see each other starting: each takes its share, unsampled
    load = other_load()
    os.environ[LOAD_ENV] = f"{load:.3f}"
    if load >= BUSY and "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def _cpu_times(cpus: set[int]) -> tuple[float, float] | None:
    """(busy, total) jiffies over the given CPUs, from /proc/stat (None where there is none)."""
    try:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        name, *values = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        v = [float(x) for x in values[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(v)
        busy += sum(v) - v[3] - v[4]
    return (busy, total) if total else None


def other_load(seconds: float = PROBE_SECONDS) -> float:
    """How many of this process's cores other work keeps busy, in cores (0.0 where it cannot be seen): CPU time
    on those cores over `seconds`, less this process's own (steal time, another VM's, counts as busy)."""
    try:
        cpus = set(os.sched_getaffinity(0))
    except AttributeError:
        return 0.0
    start, own0, t0 = _cpu_times(cpus), os.times(), time.monotonic()
    time.sleep(seconds)
    end, own1, t1 = _cpu_times(cpus), os.times(), time.monotonic()
    if start is None or end is None or end[1] <= start[1]:
        return 0.0
    share = (end[0] - start[0]) / (end[1] - start[1])  # of the cores' time, busy
    own = (own1.user + own1.system - own0.user - own0.system) / max(t1 - t0, 1e-6)
    return max(0.0, share * len(cpus) - own)


_recent: list[float] = []  # (when, load) of this process's last sample


def sampled_load(max_age: float = 30.0) -> float:
    """The load `prepare_environment` sampled for this command, or (library use: several runs in one process) a
    sample at most `max_age` seconds old."""
    try:
        return float(os.environ[LOAD_ENV])
    except (KeyError, ValueError):
        pass
    if not _recent or time.monotonic() - _recent[0] > max_age:
        _recent[:] = [time.monotonic(), other_load()]
    return _recent[1]


def _quota() -> float | None:
    """The cgroup CPU quota in cores (None: no quota)."""
    try:
        with open(CGROUP_V2) as f:  # cgroup v2: "max 100000" or "200000 100000"
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(CGROUP_V1[0]) as f:
            quota_us = int(f.read())
        with open(CGROUP_V1[1]) as f:
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
    chosen_by: str  # "auto", "--threads", "CNN_THREADS", "--deterministic", "as saved" (a resumed run)
    busy: int = 0  # cores other work keeps busy (auto only)

    def describe(self) -> str:
        workers = f", {self.workers} data worker{'s' if self.workers != 1 else ''}" if self.workers else ""
        how = f" ({self.chosen_by})" if self.chosen_by != "auto" else f" ({self.busy} busy)" if self.busy else ""
        return f"{self.intra} thread{'s' if self.intra != 1 else ''}{how}{workers} on {self.cores} core(s)"


def plan(
    threads: int | None = None,
    workers: int | None = None,
    *,
    streams_files: bool = False,
    deterministic: bool = False,
    load: float | None = None,
) -> ThreadPlan:
    """Intra-op threads and DataLoader workers for this process. `threads` (--threads) or CNN_THREADS decide the
    threads, `workers` (--workers) the workers. Otherwise the free cores (this process's share, less those other
    work keeps busy: `load`, sampled when not given) are shared: a process that reads image files from disk gives
    one of them to a worker when it has two or more (half of them on larger machines), the model gets the rest."""
    cores = max(1, usable_cores() // processes_per_node())
    env = parse_threads(os.environ.get(ENV), ENV)
    busy, chosen_by = 0, "auto"
    if threads is not None:
        chosen_by = "--threads"
    elif env is not None:
        threads, chosen_by = env, ENV
    elif deterministic:
        threads, chosen_by = cores, "--deterministic"
    elif processes_per_node() == 1:  # torchrun's ranks take their share: sampling, they would count each other
        load = sampled_load() if load is None else load
        busy = min(cores - 1, int(load + (1 - BUSY)))
    free = cores - busy
    if workers is None:
        workers = max(1 if free >= 2 else 0, min(8, free // 2) if free >= 4 else 0) if streams_files else 0
    if threads is None:
        threads = max(1, free - workers)
    return ThreadPlan(threads, workers, cores, chosen_by, busy)


DECODE_MS = 2.0  # an image that decodes faster than this is read in the training process: a worker costs more


def decoding_is_costly(data, sample: int = 8) -> bool:
    """Whether a folder's training images take long enough to decode and resize that a worker process pays for
    itself (see `files_are_costly`)."""
    return files_are_costly([path for path, _ in data.split("train")[:sample]], data.channels, data.image_size)


def files_are_costly(files: list[str], channels: int, size) -> bool:
    """Whether images take long enough to decode and resize that a worker process pays for itself (camera photos
    do; small PNGs decode in a fraction of the cost of passing them between processes): the mean time of `files`
    (it stops as soon as their total says so: camera photos are slow)."""
    from cnncli.data.images import load_resized, read_image

    if not files:
        return False
    read_image(files[0], channels)  # the decoders' first use (imports, tables) is not what every image costs
    budget = DECODE_MS * len(files) / 1000
    t0 = time.perf_counter()
    for path in files:
        load_resized(path, channels, size)
        if time.perf_counter() - t0 >= budget:
            return True
    return False


def for_reading(files: list[str], channels: int, size, device: str, sample: int = 8) -> int:
    """DataLoader workers for a command that reads image files once (cnn eval, cnn predict), with torch's threads
    set on a CPU so that the two never take more cores than there are: on a GPU the cores this process may use (at
    most 8); on a CPU the thread policy's share when decoding is costly (camera photos), else none (small images
    decode faster than a worker passes them on); none for a handful of images (starting a worker costs more)."""
    if len(files) <= sample:
        return 0
    if str(device).startswith("cuda"):
        return min(8, max(1, usable_cores() // processes_per_node()))
    p = plan(streams_files=files_are_costly(files[:sample], channels, size))
    apply(p)
    return p.workers


def apply(p: ThreadPlan) -> None:
    """Set torch's intra-op threads, and its inter-op pool to one thread (cnn runs one graph at a time) where the
    pool has not started yet."""
    import torch

    torch.set_num_threads(p.intra)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already started (a second command in the same process): it stays as it is
        pass
