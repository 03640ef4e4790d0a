"""A folder's images decoded once (`cnn train --cache`): yolo's `cache=ram|disk`, FFCV's pre-decoded files.

Every epoch of a folder dataset would otherwise decode every file again, and camera JPEGs cost far more to decode
than a small model costs to train on them. The cache holds each image exactly as the loader would make it (decoded
at the smallest JPEG scale that covers the working size, then resized to it by the one resize policy: data/images.py
`load_resized`), so later epochs only crop and flip uint8 tensors, and a cached run sees the batches an uncached run
would, bit for bit.

- `ram`: one uint8 tensor [N, C, H, W] per split, built before the first epoch by threads (PIL and torch release
  the GIL while they decode and resize). Refused when it would not fit in the memory available.
- `disk`: one file per image under `--data-dir`/cache/, named by a hash of the image's path and by its size and
  modification time, so a changed image is noticed and only it is decoded again (its old file is removed). Loaded
  into RAM when it fits, read file by file otherwise. A cache that cannot be written (read-only place, full disk)
  is a warning: the run keeps its cache in RAM, or reads the images.
- `auto` (the default): RAM when the decoded images take at most RAM_SHARE of the memory available, else none
  (said in the log, with the other choices).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from cnncli.errors import UsageError, shown

RAM_SHARE = 0.25  # auto: the decoded set may take this share of the memory available
RAM_LIMIT = 0.75  # --cache ram: refused above this share (the model, the optimizer and the OS need the rest)
CACHED_SPLITS = ("train", "val")  # read every epoch; the test split is read once
FORMAT = 1  # the files' layout and the decoding policy: a change makes a new cache folder
PROGRESS_EVERY = 2.0  # seconds between progress lines while a cache is built


def available_memory() -> int | None:
    """Bytes this process may still allocate without swapping: the kernel's MemAvailable, less what a cgroup limit
    (containers, CI runners) leaves; None where neither can be read."""
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit_file) as f:
                limit = f.read().strip()
            with open(usage_file) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            left = max(0, int(limit) - used)
            avail = left if avail is None else min(avail, left)
        break
    return avail


def size_text(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


@dataclass(frozen=True)
class CachePlan:
    mode: str  # none | ram | disk
    in_ram: bool  # the pixels are held in memory (ram, or disk when it fits)
    nbytes: int  # the decoded images' size
    reason: str = ""  # why auto chose none


def choose(mode: str, n_images: int, image_bytes: int, available: int | None = None) -> CachePlan:
    """What `--cache MODE` means for n images of `image_bytes` each on this machine (UsageError: ram that would not
    fit)."""
    need = n_images * image_bytes
    avail = available_memory() if available is None else available
    fits = avail is not None and need <= RAM_SHARE * avail
    if mode == "none":
        return CachePlan("none", False, need)
    if mode == "auto":
        if fits:
            return CachePlan("ram", True, need)
        why = (
            "the memory available is unknown"
            if avail is None
            else f"more than {RAM_SHARE:.0%} of the {size_text(avail)} available"
        )
        return CachePlan("none", False, need, why)
    if mode == "ram":
        if avail is not None and need > RAM_LIMIT * avail:
            raise UsageError(
                f"--cache ram: the decoded images would take {size_text(need)}, more than {RAM_LIMIT:.0%} of the "
                f"{size_text(avail)} of memory available",
                "use --cache disk (read from files each epoch), a smaller --img-size, or --cache none",
            )
        return CachePlan("ram", True, need)
    if mode == "disk":
        return CachePlan("disk", fits, need)
    raise UsageError(f"unknown --cache {mode!r}", "choose auto, none, ram or disk")


class DiskStore:
    """One file per image: raw uint8 [C, H, W] bytes, named by a hash of the image's real path, its size and its
    modification time (nanoseconds)."""

    def __init__(self, folder: str, shape: tuple[int, int, int]):
        self.folder, self.shape = folder, tuple(shape)
        self.nbytes = shape[0] * shape[1] * shape[2]
        self.writable = True
        self._listed: dict[str, list[str]] | None = None  # file names by image, listed at the first write
        self._lock = threading.Lock()

    @classmethod
    def for_dataset(cls, data_dir: str, root: str, shape: tuple[int, int, int]) -> DiskStore:
        """The cache folder of one image folder at one working size (and decoder version)."""
        import PIL

        key = hashlib.sha1(os.path.realpath(root).encode("utf-8", "surrogateescape")).hexdigest()[:16]
        name = f"{os.path.basename(os.path.normpath(root))[:40]}-{key}-{'x'.join(map(str, shape))}-v{FORMAT}-pil{PIL.__version__}"
        return cls(os.path.join(data_dir, "cache", name), shape)

    def _names(self, path: str) -> tuple[str, str]:
        st = os.stat(path)
        stem = hashlib.sha1(os.path.realpath(path).encode("utf-8", "surrogateescape")).hexdigest()[:24]
        return stem, f"{stem}-{st.st_size}-{st.st_mtime_ns}.u8"

    def get(self, path: str) -> torch.Tensor | None:
        """The image's cached pixels, or None when it has none (never cached, changed since, damaged)."""
        try:
            with open(os.path.join(self.folder, self._names(path)[1]), "rb") as f:
                raw = f.read(self.nbytes + 1)
        except OSError:
            return None
        if len(raw) != self.nbytes:
            return None
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(self.shape)

    def put(self, path: str, pixels: torch.Tensor) -> None:
        """Keep the image's pixels and drop its older versions; OSError when it cannot. Written to a temporary file
        and renamed (a reader never sees half a file), without fsync: a cache file lost in a crash is decoded
        again, and one cut short has the wrong size, which `get` refuses."""
        import tempfile

        stem, name = self._names(path)
        with self._lock:
            if self._listed is None:  # the folder is listed once, not once per image
                os.makedirs(self.folder, exist_ok=True)
                self._listed = {}
                for old in os.listdir(self.folder):
                    self._listed.setdefault(old.split("-", 1)[0], []).append(old)
            stale = [old for old in self._listed.pop(stem, []) if old != name]
        fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pixels.contiguous().numpy().tobytes())
            os.replace(tmp, os.path.join(self.folder, name))
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        for old in stale:
            try:
                os.remove(os.path.join(self.folder, old))
            except OSError:
                pass


class _FilePixels:
    """A split's pixels read from the disk cache image by image (a cache too large for memory); an image whose file
    went missing since is decoded again."""

    def __init__(self, store: DiskStore, samples, channels: int, size):
        self.store, self.samples, self.channels, self.size = store, samples, channels, tuple(size)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> torch.Tensor:
        from cnncli.data.images import load_resized

        path = self.samples[i][0]
        got = self.store.get(path)
        return got if got is not None else load_resized(path, self.channels, self.size)


class _RamPixels:
    """A split's pixels in one uint8 tensor; each read is a copy (a view would send the whole tensor's storage to
    a DataLoader worker)."""

    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.pixels[i].clone()


@dataclass
class CacheStats:
    images: int = 0
    decoded: int = 0  # read from the image files
    reused: int = 0  # read from the disk cache
    seconds: float = 0.0
    unwritable: str = ""  # why the disk cache could not be written (the run went on without it)


def _fill(
    samples, channels: int, size, store: DiskStore | None, keep: bool, stats: CacheStats, progress: Callable | None
) -> torch.Tensor | None:
    """Every image of `samples` at the working size, from the disk cache or decoded (and then written to it):
    [N, C, H, W] when `keep`, else None (the files are the cache)."""
    from concurrent.futures import ThreadPoolExecutor

    from cnncli.data.images import load_resized
    from cnncli.engine.threads import usable_cores

    out = torch.empty((len(samples), channels, *size), dtype=torch.uint8) if keep else None

    def one(i: int) -> bool:
        """Image i into the cache; whether it was decoded (not found in the disk cache)."""
        path = samples[i][0]
        got = store.get(path) if store is not None else None
        decoded = got is None
        if decoded:
            got = load_resized(path, channels, size)
            if store is not None and store.writable:
                try:
                    store.put(path, got)
                except OSError as e:
                    store.writable, stats.unwritable = False, str(e)
        if out is not None:
            out[i] = got
        return decoded

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one image per thread: intra-op threads on top would oversubscribe the cores
    try:
        with ThreadPoolExecutor(max_workers=max(1, usable_cores())) as pool:
            for decoded in pool.map(one, range(len(samples))):
                stats.decoded += decoded
                stats.reused += not decoded
                if progress:
                    progress(stats.decoded + stats.reused)
    finally:
        torch.set_num_threads(threads)
    return out


def attach(data, mode: str, data_dir: str, report: Callable[[str], None] | None = None):
    """The folder dataset `data` with its training and validation images cached as `mode` says (see the module
    docstring), and what was done, said through `report`."""
    splits = [s for s in CACHED_SPLITS if s in data.splits]
    n = sum(len(data.split(s)) for s in splits)
    shape = (data.channels, *data.image_size)
    plan = choose(mode, n, shape[0] * shape[1] * shape[2])
    if plan.mode == "none":
        if plan.reason and report:
            report(
                f"{data.name}: images read from their files every epoch: decoded they would take "
                f"{size_text(plan.nbytes)}, {plan.reason} (--cache disk keeps them on disk)"
            )
        return data
    store = DiskStore.for_dataset(data_dir, data.root, shape) if plan.mode == "disk" else None
    stats = CacheStats(images=n)
    progress = _progress(report, n, shape)
    t0 = time.perf_counter()
    cache = {}
    for s in splits:
        pixels = _fill(data.split(s), data.channels, data.image_size, store, plan.in_ram, stats, progress)
        cache[s] = _RamPixels(pixels) if pixels is not None else _FilePixels(store, data.split(s), shape[0], shape[1:])
    stats.seconds = time.perf_counter() - t0
    if report:
        for line in _summary(data.name, plan, store, stats):
            report(line)
    return replace(data, cache=cache)


def _progress(report: Callable[[str], None] | None, n: int, shape) -> Callable[[int], None] | None:
    """A progress line every PROGRESS_EVERY seconds while the cache is built (`caching 12,000 images ... 43%`)."""
    if report is None:
        return None
    last = [time.perf_counter()]

    def tick(done: int) -> None:
        now = time.perf_counter()
        if done < n and now - last[0] >= PROGRESS_EVERY:
            last[0] = now
            report(f"caching {n:,} images at {'x'.join(map(str, shape))} ... {done / n:.0%}")

    return tick


def _summary(name: str, plan: CachePlan, store: DiskStore | None, stats: CacheStats) -> list[str]:
    where = "in RAM" if plan.in_ram else "on disk, read file by file (too large for memory)"
    lines = [
        f"{name}: {stats.images:,} images cached {where}: {size_text(plan.nbytes)}, "
        + (
            f"{stats.reused:,} from the disk cache, {stats.decoded:,} decoded"
            if store
            else f"{stats.decoded:,} decoded"
        )
        + f" in {stats.seconds:.1f}s"
        + (f" ({shown(store.folder)})" if store else "")
        + ("" if store else "; --cache none reads the files every epoch")
    ]
    if stats.unwritable:
        lines.append(
            f"warning: cannot write the disk cache ({stats.unwritable}): this run keeps its images in "
            + ("RAM" if plan.in_ram else "their files")
        )
    return lines
