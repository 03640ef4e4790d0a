"""Batch loaders with one interface: iterate (x float normalized, y long) on the device; `set_epoch`; `len`.

`TensorLoader` keeps a uint8 dataset on the training device and augments whole batches with tensor ops
(random crop with zero padding per sample, horizontal flip), like airbench's CifarLoader: no PIL, no worker
processes. Its randomness is a pure function of (seed, epoch, batch index), so a run resumed mid-epoch sees
exactly the batches an uninterrupted run would. Under DDP each rank takes its own shard of every epoch.
`FolderLoader` streams image files through a DataLoader with workers (JPEGs decoded at the smallest scale that
covers the working size), or reads them from the folder's cache (data/cache.py); workers send uint8 pixels and the
batch is normalized on the device, the same way as the tensor loader's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cnncli.errors import UsageError
from cnncli.preprocess import affine


def _gen(seed: int, *parts: int) -> torch.Generator:
    s = seed
    for p in parts:
        s = (s * 1_000_003 + p + 1) % (2**62)
    return torch.Generator().manual_seed(s)


class TensorLoader:
    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean,
        std,
        train: bool,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        device="cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool | None = None,
        policy=None,
        sample_weights: torch.Tensor | None = None,
    ):
        """`policy`: an --augment policy applied to each training image after the crop and flip
        (engine/recipe.py); `sample_weights`: draw each epoch's images with replacement by these weights
        (--sampler balanced) instead of a permutation."""
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.batch_size = batch_size
        self.train = train
        self.crop_padding = crop_padding if train else 0
        self.flip = flip and train
        self.seed = seed
        self.epoch = 0
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.drop_last = train if drop_last is None else drop_last
        self.policy = policy if train else None
        self.sample_weights = sample_weights if train else None
        # (x - mean) / std as x * scale + shift, done in place: one pass over the batch, no temporaries
        self.scale, self.shift = affine(mean, std, self.device)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> torch.Tensor:
        n = len(self.images)
        if self.train and self.sample_weights is not None:
            idx = torch.multinomial(
                self.sample_weights.double(), n, replacement=True, generator=_gen(self.seed, self.epoch)
            )
        elif self.train:
            idx = torch.randperm(n, generator=_gen(self.seed, self.epoch))
        else:
            idx = torch.arange(n)
        if self.world_size > 1:  # every rank gets an equal shard (padded by wrapping, like DistributedSampler)
            per = math.ceil(n / self.world_size)
            idx = torch.cat([idx, idx[: per * self.world_size - n]])
            idx = idx[self.rank :: self.world_size]
        return idx

    def __len__(self) -> int:
        n = len(self._indices()) if self.world_size > 1 else len(self.images)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self._indices())

    def __iter__(self):
        return self.batches(start=0)

    def batches(self, start: int = 0):
        """Yield batches from batch index `start` on (a resumed epoch skips the ones already done). The epoch's
        order and augmentation draws go to the device once, at its start: no batch waits on a host copy."""
        idx = self._indices().to(self.device)
        augment = self.train and (self.crop_padding or self.flip)
        draws = self._epoch_draws(start, len(idx)) if augment else None
        for b in range(start, len(self)):
            sel = idx[b * self.batch_size : (b + 1) * self.batch_size]
            x = self.images.index_select(0, sel)  # much faster than advanced indexing for whole rows
            if augment:
                x = self._augment(x, draws[:, (b - start) * self.batch_size :][:, : len(sel)])
            if self.policy is not None:
                from cnncli.engine.recipe import apply_per_sample

                seed = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + b
                x = apply_per_sample(self.policy, x, (seed * self.world_size + self.rank) % (1 << 62))
            x = x.float().mul_(self.scale).add_(self.shift)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, self.labels.index_select(0, sel)

    def _draw(self, g: torch.Generator, n: int, fn) -> torch.Tensor:
        """Random values for this rank's samples, drawn for the whole global batch: under DDP the union of the
        ranks' batches is augmented exactly as the single-process batch would be."""
        if self.world_size == 1:
            return fn(n)
        return fn(n * self.world_size)[self.rank :: self.world_size][:n]

    def _epoch_draws(self, start: int, n_samples: int) -> torch.Tensor:
        """[3, samples]: crop offsets dy, dx and the flip bit of every sample from batch `start` on, drawn batch by
        batch from the same generators as always (a resumed epoch continues with the same draws), copied once."""
        p = self.crop_padding
        parts = []
        for b in range(start, len(self)):
            n = min(self.batch_size, n_samples - b * self.batch_size)
            g = _gen(self.seed, self.epoch, b + 1)
            dy = (
                self._draw(g, n, lambda k, g=g: torch.randint(0, 2 * p + 1, (k,), generator=g)) if p else torch.zeros(n)
            )
            dx = (
                self._draw(g, n, lambda k, g=g: torch.randint(0, 2 * p + 1, (k,), generator=g)) if p else torch.zeros(n)
            )
            flip = (
                (self._draw(g, n, lambda k, g=g: torch.rand(k, generator=g)) < 0.5)
                if self.flip
                else torch.zeros(n, dtype=torch.bool)
            )
            parts.append(torch.stack((dy.long(), dx.long(), flip.long())))
        draws = torch.cat(parts, 1) if parts else torch.zeros(3, 0, dtype=torch.long)
        return (
            draws.pin_memory().to(self.device, non_blocking=True)
            if self.device.type == "cuda"
            else draws.to(self.device)
        )

    def _augment(self, x: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            dy, dx = draws[0], draws[1]
            xp = F.pad(x, (p, p, p, p))
            rows = (dy[:, None] + torch.arange(h, device=self.device))[:, None, :, None].expand(n, c, h, w + 2 * p)
            x = xp.gather(2, rows)
            cols = (dx[:, None] + torch.arange(w, device=self.device))[:, None, None, :].expand(n, c, h, w)
            x = x.gather(3, cols)
        if self.flip:
            x = torch.where(draws[2].bool().view(-1, 1, 1, 1), x.flip(3), x)
        return x


class _FileDataset(torch.utils.data.Dataset):
    """Images keyed by (index, augmentation seed): each is read at the working size (decoded from its file, or
    taken from the cache, which holds exactly those pixels), then randomly cropped and flipped when training. A
    sample's crop and flip are drawn from its own seed, so they are the same whichever process reads it (0, 1 or 8
    workers give the same batches), and a cached run sees the batches an uncached run would."""

    def __init__(self, samples, size, channels: int, augment, random: bool, cached=None):
        self.samples, self.size, self.channels, self.augment = samples, tuple(size), channels, augment
        self.random, self.cached = random, cached

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, key):
        from cnncli.data.images import load_resized

        i, draw = key
        path, label = self.samples[i]
        img = self.cached[i] if self.cached is not None else load_resized(path, self.channels, self.size)
        if not self.random or self.augment is None:
            return img, label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(draw)
            return self.augment(img), label


class _Keyed(torch.utils.data.Sampler):
    """Another sampler's indices, each with the seed of its augmentation: a function of (seed, epoch, index) only,
    computed in the main process (where the epoch is known, persistent workers or not)."""

    def __init__(self, inner, seed: int):
        self.inner, self.seed, self.epoch = inner, seed, 0

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        return ((i, (base + i) % (1 << 62)) for i in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def folder_augment(image_size, flip: bool = True, augment: str = "basic", channels: int = 3):
    """Training's augmentation of a uint8 image [C, H, W] already at `image_size`: a random resized crop (70-100% of
    it) and a horizontal flip, then the --augment policy (none: nothing at all)."""
    import torchvision.transforms as T

    from cnncli.engine.recipe import policy

    if augment == "none":
        return None
    extra = policy(augment, channels)
    return T.Compose(
        [T.RandomResizedCrop(tuple(image_size), scale=(0.7, 1.0), antialias=True)]
        + ([T.RandomHorizontalFlip()] if flip else [])
        + ([extra] if extra is not None else [])
    )


class _Weighted(torch.utils.data.Sampler):
    """--sampler balanced for files: each epoch draws len(weights) images with replacement by the weights, from a
    generator seeded by (seed, epoch); under DDP every rank draws the same list and takes its shard."""

    def __init__(self, weights: torch.Tensor, seed: int, rank: int = 0, world_size: int = 1):
        self.weights, self.seed, self.rank, self.world_size, self.epoch = weights.double(), seed, rank, world_size, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        n = len(self.weights)
        idx = torch.multinomial(self.weights, n, replacement=True, generator=_gen(self.seed, self.epoch)).tolist()
        return iter(idx[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(range(self.rank, len(self.weights), self.world_size))


class FolderLoader:
    """Image files through a DataLoader with workers (for datasets too large to hold as one tensor)."""

    def __init__(
        self,
        samples,
        *,
        image_size,
        channels,
        batch_size: int,
        mean,
        std,
        train: bool,
        flip: bool = True,
        workers: int = 2,
        seed: int = 0,
        device="cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        cached=None,
        persistent: bool = False,
        augment: str = "basic",
        sample_weights: torch.Tensor | None = None,
    ):
        """`cached`: the split's pixels at `image_size` (data/cache.py), read instead of the files. `persistent`:
        the workers stay between passes (a training run's splits, read every epoch; `close` ends them)."""
        self.device = torch.device(device)
        self.channels_last = channels_last
        self.scale, self.shift = affine(mean, std, self.device)
        aug = folder_augment(image_size, flip, augment, channels) if train else None
        ds = _FileDataset(samples, image_size, channels, aug, train, cached)
        self.sampler = None
        self.generator = torch.Generator().manual_seed(seed)
        if train and sample_weights is not None:
            self.sampler = _Weighted(sample_weights, seed, rank, world_size)
            inner = self.sampler
        elif world_size > 1:
            self.sampler = torch.utils.data.distributed.DistributedSampler(
                ds, world_size, rank, shuffle=train, seed=seed
            )
            inner = self.sampler
        elif train:
            inner = torch.utils.data.RandomSampler(ds, generator=self.generator)
        else:
            inner = torch.utils.data.SequentialSampler(ds)
        self.keyed = _Keyed(inner, seed)
        self.loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch_size,
            sampler=self.keyed,
            num_workers=workers,
            drop_last=train and len(ds) >= batch_size,
            pin_memory=self.device.type == "cuda",
            persistent_workers=persistent and workers > 0,
        )
        self.num_samples = len(self.sampler) if self.sampler is not None else len(ds)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(epoch * 7919 + 17)
        self.keyed.epoch = epoch

    def __len__(self) -> int:
        return len(self.loader)

    def close(self) -> None:
        """Stop the persistent worker processes now (the end of a run), not whenever the loader is collected."""
        it = getattr(self.loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self.loader._iterator = None

    def __iter__(self):
        return self.batches(0)

    def batches(self, start: int = 0):
        try:
            yield from self._batches(start)
        except UsageError as e:  # from a worker process: the message arrives wrapped in the worker's traceback
            text = str(e)
            raise UsageError(
                text.rsplit("UsageError: ", 1)[-1].strip().splitlines()[-1] if "UsageError: " in text else text
            ) from None

    def _batches(self, start: int):
        batches = (xy for b, xy in enumerate(self.loader) if b >= start)
        if self.device.type == "cuda":
            yield from self._prefetched(batches)
            return
        for x, y in batches:
            yield self._to_device(x, y)

    def _to_device(self, x, y):
        x = x.to(self.device, non_blocking=True).float().mul_(self.scale).add_(self.shift)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y.to(self.device, non_blocking=True)

    def _prefetched(self, batches):
        """CUDA: the next batch is copied (from pinned memory, on a side stream) and normalised while the current one
        trains; the training stream waits for it only when it needs it."""
        side = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)

        def load(xy):
            with torch.cuda.stream(side):
                return self._to_device(*xy)

        nxt = next(batches, None)
        ready = load(nxt) if nxt is not None else None
        while ready is not None:
            main.wait_stream(side)
            x, y = ready
            x.record_stream(main)  # the side stream's allocations are in use on the main stream now
            y.record_stream(main)
            nxt = next(batches, None)
            ready = load(nxt) if nxt is not None else None
            yield x, y


def make_loader(
    data,
    split: str,
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
    device="cpu",
    channels_last: bool = False,
    workers: int = 2,
    rank: int = 0,
    world_size: int = 1,
    augment: str = "basic",
    sample_weights=None,
):
    """The right loader for a TensorData or FolderData split (`augment`, `sample_weights`: the recipe's)."""
    from cnncli.data.datasets import TensorData

    if isinstance(data, TensorData):
        from cnncli.engine.recipe import policy

        x, y = data.split(split)
        basic = augment != "none"
        return TensorLoader(
            x,
            y,
            batch_size=batch_size,
            mean=data.mean,
            std=data.std,
            train=train,
            crop_padding=data.crop_padding if basic else 0,
            flip=data.flip and basic,
            seed=seed,
            device=device,
            channels_last=channels_last,
            rank=rank,
            world_size=world_size,
            policy=policy(augment, x.shape[1]) if train else None,
            sample_weights=sample_weights,
        )
    return FolderLoader(
        data.split(split),
        image_size=data.image_size,
        channels=data.channels,
        batch_size=batch_size,
        mean=data.mean,
        std=data.std,
        train=train,
        flip=data.flip,
        workers=workers,
        seed=seed,
        device=device,
        channels_last=channels_last,
        rank=rank,
        world_size=world_size,
        cached=data.cached(split),
        persistent=split in ("train", "val"),  # read every epoch; the test split once
        augment=augment,
        sample_weights=sample_weights,
    )
