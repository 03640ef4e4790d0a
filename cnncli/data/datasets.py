"""What a loaded dataset is: `TensorData` (small images, in memory) or `FolderData` (files streamed from disk).

Small-image datasets come back as `TensorData`: one uint8 tensor [N, C, H, W] per split, labels, class names,
mean/std and augmentation settings, so the trainer can hold them on the device and augment per batch. Folders of
larger images come back as `FolderData` and stream through a DataLoader with workers. Which datasets exist is the
registry's business (`cnncli/data/_registry.py`, definitions in `cnncli/data/sets/`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from cnncli.data._registry import DatasetInfo
from cnncli.errors import UsageError
from cnncli.preprocess import Preprocess

VAL_SEED = 1234  # the train/val split is fixed (not the training seed) so `cnn eval --split val` can rebuild it


@dataclass
class _Dataset:
    """What both kinds share: named splits, classes, normalization, and the registry's augmentation and defaults."""

    name: str
    splits: dict
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool
    epochs: int
    batch_size: int

    def num_samples(self, split: str) -> int:
        data = self.split(split)
        return len(data[0]) if isinstance(data, tuple) else len(data)

    def split(self, name: str):
        if name not in self.splits:
            raise UsageError(f"dataset {self.name} has no split {name!r}", "use " + ", ".join(self.splits))
        return self.splits[name]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def preprocess(self) -> Preprocess:
        """How this dataset's images become model inputs (recorded in every checkpoint trained on it)."""
        return Preprocess(tuple(self.input_size), tuple(self.mean), tuple(self.std), tuple(self.classes))


@dataclass
class TensorData(_Dataset):
    """A whole small-image dataset in memory: splits of (uint8 images [N, C, H, W], labels)."""

    @property
    def input_size(self) -> tuple[int, int, int]:
        x = self.splits["train"][0] if "train" in self.splits else next(iter(self.splits.values()))[0]
        return tuple(x.shape[1:])


@dataclass
class FolderData(_Dataset):
    """An ImageFolder dataset streamed from disk: splits of [(path, label)] under `root`."""

    root: str = ""
    image_size: tuple[int, int] = (0, 0)
    channels: int = 3
    folders: tuple[str, ...] = ()  # the split folders present (train/ val/ test/); () for one folder of classes
    notes: tuple[str, ...] = ()  # what reading the folder left out (hidden files), for the log
    cache: dict = field(default_factory=dict)  # split -> its pixels at image_size (data/cache.py), when cached

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.channels, *self.image_size)

    def cached(self, split: str):
        """The split's cached pixels (indexable by sample: uint8 [C, H, W] at image_size), or None."""
        return self.cache.get(split)


def tensor_dataset(
    info: DatasetInfo,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    classes: list[str],
    val_fraction: float = 0.1,
) -> TensorData:
    """A TensorData from uint8 images [N, C, H, W] and labels, with a fixed, seeded part of train held out as the
    validation split (best.pt and early stopping); mean/std are measured on the training images unless the
    registry gives them."""
    n = len(train_x)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(VAL_SEED))
    n_val = max(1, int(round(n * val_fraction)))
    val_idx, tr_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    mean, std = info.mean, info.std
    if mean is None:
        xf = train_x[tr_idx].float() / 255
        mean = tuple(xf.mean(dim=(0, 2, 3)).tolist())
        std = tuple(xf.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist())
    splits = {
        "train": (train_x[tr_idx].contiguous(), train_y[tr_idx].contiguous()),
        "val": (train_x[val_idx].contiguous(), train_y[val_idx].contiguous()),
        "test": (test_x.contiguous(), test_y.contiguous()),
    }
    return TensorData(
        info.name,
        splits,
        list(classes),
        tuple(mean),
        tuple(std),
        info.crop_padding,
        info.flip,
        info.epochs,
        info.batch_size,
    )
