"""`folder:PATH`: your own images, one sub-folder per class (torchvision's ImageFolder layout)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from cnncli.data._registry import register_dataset
from cnncli.errors import UsageError, shown

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.25,)


@dataclass
class _Scan:
    classes: list[str]
    samples: list[tuple[str, int]]
    skipped: list[str]  # hidden files and folders left out (said once)


def _scan(root: str) -> _Scan:
    """torchvision's ImageFolder layout (one sub-folder per class, images found recursively), read the way its
    users expect: hidden files and folders (`._x.png`, `.DS_Store`, `.ipynb_checkpoints`) are not images or
    classes, and a symbolic link loop is followed once, so no image is counted twice."""
    from cnncli.data.images import is_hidden, walk_images
    from cnncli.fileio import os_error

    hint = "expected one sub-folder per class with .png/.jpg images"
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        raise os_error(e, root, reading=True) from None
    classes = sorted(e.name for e in entries if e.is_dir() and not is_hidden(e.name))
    skipped = [e.path for e in entries if is_hidden(e.name)]
    if not classes:
        raise UsageError(f"cannot read images in {shown(root)}: no class sub-folders", hint)
    samples, empty = [], []
    for i, name in enumerate(classes):
        files = walk_images(os.path.join(root, name), skipped)
        empty += [] if files else [name]
        samples += [(f, i) for f in files]
    if empty:
        listed = ", ".join(shown(n, 40) for n in empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise UsageError(f"cannot read images in {shown(root)}: no images in the class folder(s) {listed}", hint)
    return _Scan(classes, samples, skipped)


SPLIT_FOLDERS = ("train", "val", "test")


def _splits(path: str) -> tuple[dict[str, list], list[str], tuple[str, ...], list[str]]:
    """Two layouts, as torchvision's ImageFolder and timm's validate.py read them:
    - split folders: train/ (+ val/, test/), each with one sub-folder per class; any of them may be missing (a
      folder with test/ alone can be evaluated, not trained on); train without val/ gets a seeded val;
    - one folder of class sub-folders: `all` is every image (what cnn eval measures), and train/val are a seeded
      80/20 split of it for training; there is no test split.
    Returns (splits, classes, the split folders present, the hidden files and folders skipped)."""
    import torch

    from cnncli.data.datasets import VAL_SEED

    present = tuple(f for f in SPLIT_FOLDERS if os.path.isdir(os.path.join(path, f)))
    splits: dict[str, list] = {}
    classes = None
    skipped: list[str] = []
    for name in present or ("all",):
        ds = _scan(os.path.join(path, name) if present else path)
        skipped += ds.skipped
        if classes is not None and list(ds.classes) != classes:
            raise UsageError(f"{name}/ has different classes from {present[0]}/", f"{ds.classes} vs {classes}")
        classes, splits[name] = list(ds.classes), list(ds.samples)
    source = "train" if present else "all"
    if source in splits and "val" not in splits:  # a seeded validation split when there is no val/
        samples = splits[source]
        if len(samples) < 2:
            raise UsageError(
                f"{path} holds {len(samples)} image(s): training needs at least 2 images",
                "one for training and one to validate; add images or a val/ folder",
            )
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(VAL_SEED)).tolist()
        n_val = max(1, len(samples) // 5)
        splits["val"] = [samples[i] for i in sorted(perm[:n_val])]
        splits["train"] = [samples[i] for i in sorted(perm[n_val:])]
    return splits, classes, present, skipped


@register_dataset(name="folder", prefix=True, epochs=20, batch_size=64, flip=True, source="folder")
def folder(info, *, data_dir, image_size=None, download=True, arg=None):
    """Your images: PATH/CLASS/*.png, or PATH/train/CLASS/... with optional val/ and test/."""
    from cnncli.data.datasets import FolderData
    from cnncli.data.images import image_mode

    path = os.path.expandvars(os.path.expanduser(arg or ""))
    if not os.path.isdir(path):
        raise UsageError(f"image folder not found: {path}", "give folder:PATH with one sub-folder per class")
    splits, classes, present, skipped = _splits(path)
    first = next(iter(splits.values()))[0][0]
    channels, native = image_mode(first)
    size = tuple(image_size) if image_size else median_size(next(iter(splits.values())), native)
    mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return FolderData(
        f"folder:{arg}",
        splits,
        classes,
        mean,
        std,
        info.crop_padding,
        info.flip,
        info.epochs,
        info.batch_size,
        root=path,
        image_size=size,
        channels=channels,
        folders=present,
        notes=tuple(_skipped_note(f"folder:{arg}", skipped)),
    )


SIZE_SAMPLE = 64  # image headers read for the folder's typical size


def median_size(samples, fallback: tuple[int, int]) -> tuple[int, int]:
    """The median height and width of up to SIZE_SAMPLE images spread over `samples` (headers only): a folder's
    typical size, which one odd first image does not decide."""
    import statistics

    from cnncli.data.images import upright_size

    step = max(1, len(samples) // SIZE_SAMPLE)
    sizes = [s for s in (upright_size(path) for path, _ in samples[::step][:SIZE_SAMPLE]) if s]
    if not sizes:
        return fallback
    return (int(statistics.median_low(h for h, _ in sizes)), int(statistics.median_low(w for _, w in sizes)))


def _skipped_note(name: str, skipped: list[str]) -> list[str]:
    if not skipped:
        return []
    shown_names = ", ".join(shown(os.path.basename(p), 40) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return [
        f"{name}: skipped {len(skipped)} hidden file(s) and folder(s) ({shown_names}): macOS ._ files, .DS_Store "
        "and checkpoint folders are not images or classes"
    ]
