"""Small datasets written in the real on-disk formats, so torchvision's own loading code runs without network."""

import os
import pickle
import struct

import numpy as np


def write_cifar10(root: str, n_train: int = 500, n_test: int = 200, seed: int = 0) -> str:
    """cifar-10-batches-py/ with data_batch_1..5, test_batch and batches.meta, as the python pickles of the release.

    Images carry a learnable signal: the class decides which colour channel is bright.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

    def batch(n):
        labels = rng.integers(0, 10, n)
        x = rng.integers(0, 100, (n, 3, 32, 32), dtype=np.uint8)
        for i, y in enumerate(labels):
            x[i, y % 3, : 8 + 2 * y] += 120
        # the release was pickled by Python 2: its keys load as str with encoding="latin1"
        return {
            "batch_label": "fixture",
            "labels": labels.tolist(),
            "data": x.reshape(n, -1),
            "filenames": [f"img{i}.png" for i in range(n)],
        }

    per = n_train // 5
    for i in range(1, 6):
        with open(os.path.join(folder, f"data_batch_{i}"), "wb") as f:
            pickle.dump(batch(per), f)
    with open(os.path.join(folder, "test_batch"), "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per, "num_vis": 3072}, f)
    return root


def _idx(path: str, arr: np.ndarray) -> None:
    """An IDX file (the MNIST format): magic with dtype 0x08 (ubyte) and ndim, big-endian dims, raw bytes."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(arr.astype(np.uint8).tobytes())


def write_mnist(root: str, n_train: int = 600, n_test: int = 200, folder: str = "MNIST", seed: int = 0) -> str:
    """MNIST/raw/ (or FashionMNIST/raw/) with the four uncompressed IDX files."""
    rng = np.random.default_rng(seed)
    raw = os.path.join(root, folder, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(y):
            x[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 250  # a bar whose height encodes the class
        _idx(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), x)
        _idx(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y)
    return root


def write_image_folder(root: str, classes=("cats", "dogs"), per_class: int = 12, size=(40, 48), with_val=False) -> str:
    from PIL import Image

    rng = np.random.default_rng(0)
    splits = ("train", "val") if with_val else ("",)
    for split in splits:
        for ci, c in enumerate(classes):
            d = os.path.join(root, split, c)
            os.makedirs(d, exist_ok=True)
            for i in range(per_class):
                arr = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
                arr[..., ci % 3] += 150
                Image.fromarray(arr).save(os.path.join(d, f"{i}.png"))
    return root


def write_svhn(root: str, n_train: int = 300, n_test: int = 100, seed: int = 0) -> str:
    """train_32x32.mat / test_32x32.mat as in the release: X [32, 32, 3, N] uint8, y [N, 1] with 10 meaning digit 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    os.makedirs(root, exist_ok=True)
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        x = rng.integers(0, 255, (32, 32, 3, n), dtype=np.uint8)
        savemat(os.path.join(root, f"{name}_32x32.mat"), {"X": x, "y": y})
    return root
