"""Datasets that need no download: the line detector's task, scikit-learn's digits, random data."""

from __future__ import annotations

from cnncli.data._registry import register_dataset


@register_dataset(epochs=4, batch_size=64)
def lines(info, *, data_dir, image_size=None, download=True, arg=None):
    """Horizontal vs vertical lines, 1x32x32, generated (20,000 train, 10,000 test)."""
    from cnncli.data import lines as task
    from cnncli.data.datasets import tensor_dataset

    tx, ty = task.generate(20000, seed=1)
    sx, sy = task.generate(10000, seed=2)
    return tensor_dataset(info, tx, ty, sx, sy, list(task.CLASSES))


@register_dataset(name="lines-modulated", epochs=4, batch_size=64)
def lines_modulated(info, *, data_dir, image_size=None, download=True, arg=None):
    """Horizontal lines multiplied along their length by cos(pi n/3): chapter 24.5.4's vulnerability (2,000 test)."""
    from cnncli.data import lines as task
    from cnncli.data.datasets import tensor_dataset

    tx, ty = task.modulated(4000, seed=1)
    sx, sy = task.modulated(2000, seed=2)
    return tensor_dataset(info, tx, ty, sx, sy, list(task.CLASSES))


@register_dataset(name="lines-ood", epochs=4, batch_size=64)
def lines_ood(info, *, data_dir, image_size=None, download=True, arg=None):
    """Oriented gratings and bars that are not lines: chapter 24.5.3's out-of-domain test (4,000 train, 2,000 test)."""
    from cnncli.data import lines as task
    from cnncli.data.datasets import tensor_dataset

    tx, ty = task.ood(4000, seed=1)
    sx, sy = task.ood(2000, seed=2)
    return tensor_dataset(info, tx, ty, sx, sy, list(task.CLASSES))


@register_dataset(epochs=40, batch_size=64, crop_padding=2)
def digits(info, *, data_dir, image_size=None, download=True, arg=None):
    """scikit-learn's 1,797 real 8x8 handwritten digits, resized to 1x32x32 (fixed 20% test split)."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from cnncli.data.datasets import tensor_dataset

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0  # values 0..16
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    n_test = 360
    te, tr = perm[:n_test].sort().values, perm[n_test:].sort().values
    return tensor_dataset(info, x[tr], y[tr], x[te], y[te], [str(i) for i in range(10)])


@register_dataset(epochs=1, batch_size=256, mean=(0.5,) * 3, std=(0.289,) * 3)
def fake(info, *, data_dir, image_size=None, download=True, arg=None):
    """Random 3x32x32 images in 10 classes, for throughput runs (nothing to learn)."""
    import torch

    from cnncli.data.datasets import tensor_dataset

    g = torch.Generator().manual_seed(0)
    tx = torch.randint(0, 256, (10000, 3, 32, 32), dtype=torch.uint8, generator=g)
    ty = torch.randint(0, 10, (10000,), generator=g)
    sx = torch.randint(0, 256, (2000, 3, 32, 32), dtype=torch.uint8, generator=g)
    sy = torch.randint(0, 10, (2000,), generator=g)
    return tensor_dataset(info, tx, ty, sx, sy, [f"class{i}" for i in range(10)])
