"""The in-memory tensor loader of `cnn train` against a DataLoader + PIL pipeline, on CIFAR-shaped data.

Usage: python benchmarks/data_pipeline.py [N] [WORKERS]
A is a DataLoader baseline like ../shared/reference/data_pipeline.py, written out here (torchvision Dataset + PIL RandomCrop(32, pad 4), flip,
ToTensor, Normalize through DataLoader(num_workers=W)); B is cnncli.data.TensorLoader with the same augmentation.
Prints images/s of each over one pass and the ratio B/A (target >= 5x).
"""

import sys
import time

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image

from cnncli.data.loader import TensorLoader

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
W = int(sys.argv[2]) if len(sys.argv) > 2 else 2
rng = np.random.default_rng(0)
data = rng.integers(0, 256, size=(N, 32, 32, 3), dtype=np.uint8)
labels = rng.integers(0, 10, size=N)
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class DS(torch.utils.data.Dataset):
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])

    def __len__(self):
        return N

    def __getitem__(self, i):
        return self.tf(Image.fromarray(data[i])), int(labels[i])


def baseline() -> float:
    dl = torch.utils.data.DataLoader(DS(), batch_size=256, shuffle=True, num_workers=W)
    t, n = time.perf_counter(), 0
    for xb, _ in dl:
        n += len(xb)
    return n / (time.perf_counter() - t)


def ours() -> float:
    x = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    loader = TensorLoader(
        x,
        torch.from_numpy(labels),
        batch_size=256,
        mean=MEAN,
        std=STD,
        train=True,
        crop_padding=4,
        flip=True,
        drop_last=False,
    )
    t, n = time.perf_counter(), 0
    for xb, _ in loader:
        n += len(xb)
    return n / (time.perf_counter() - t)


if __name__ == "__main__":
    a = baseline()
    b = ours()
    print(
        f"A DataLoader+PIL (workers={W}): {a:,.0f} img/s   B cnncli TensorLoader: {b:,.0f} img/s   B/A = {b / a:.1f}x (target >= 5x)"
    )
