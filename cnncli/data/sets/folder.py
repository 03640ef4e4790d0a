"""`folder:PATH`: your own images, one sub-folder per class (torchvision's ImageFolder layout)."""

from __future__ import annotations

import os

from cnncli.data._registry import register_dataset
from cnncli.errors import UsageError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.25,)


def _scan(root: str):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(root)
    except (FileNotFoundError, RuntimeError) as e:
        raise UsageError(f"cannot read images in {root}: {str(e).splitlines()[0]}",
                         "expected one sub-folder per class with .png/.jpg images") from None


def _splits(path: str) -> tuple[dict[str, list], list[str]]:
    """train/ (+ val/, test/) when present, else the whole folder as train; val made by seed when missing."""
    import torch

    from cnncli.data.datasets import VAL_SEED

    splits: dict[str, list] = {}
    has_train = os.path.isdir(os.path.join(path, "train"))
    tr = _scan(os.path.join(path, "train") if has_train else path)
    classes, splits["train"] = list(tr.classes), list(tr.samples)
    for other in ("val", "test") if has_train else ():
        if os.path.isdir(os.path.join(path, other)):
            ds = _scan(os.path.join(path, other))
            if ds.classes != classes:
                raise UsageError(f"{other}/ has different classes from train/", f"{ds.classes} vs {classes}")
            splits[other] = list(ds.samples)
    if "val" not in splits:  # a seeded split when there is no val/
        samples = splits["train"]
        if len(samples) < 2:
            raise UsageError(f"{path} holds {len(samples)} image(s): training needs at least 2 images",
                             "one for training and one to validate; add images or a val/ folder")
        perm = torch.randperm(len(samples), generator=torch.Generator().manual_seed(VAL_SEED)).tolist()
        n_val = max(1, len(samples) // 5)
        splits["val"] = [samples[i] for i in sorted(perm[:n_val])]
        splits["train"] = [samples[i] for i in sorted(perm[n_val:])]
    if "test" not in splits:
        splits["test"] = splits["val"]
    return splits, classes


@register_dataset(name="folder", prefix=True, epochs=20, batch_size=64, flip=True, source="folder")
def folder(info, *, data_dir, image_size=None, download=True, arg=None):
    """Your images: PATH/CLASS/*.png, or PATH/train/CLASS/... with optional val/ and test/."""
    from PIL import Image

    from cnncli.data.datasets import FolderData

    path = arg or ""
    if not os.path.isdir(path):
        raise UsageError(f"image folder not found: {path}", "give folder:PATH with one sub-folder per class")
    splits, classes = _splits(path)
    first = splits["train"][0][0]
    try:
        with Image.open(first) as im:
            channels = 1 if im.mode in ("L", "I", "I;16", "1") else 3
            native = (im.height, im.width)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UsageError(f"cannot read image {first}: {e}", "remove or replace the file") from None
    size = tuple(image_size) if image_size else native
    mean, std = (GRAY_MEAN, GRAY_STD) if channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return FolderData(f"folder:{path}", splits, classes, mean, std, info.crop_padding, info.flip, info.epochs,
                      info.batch_size, root=path, image_size=size, channels=channels)
