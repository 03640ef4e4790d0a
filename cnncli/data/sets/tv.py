"""torchvision's small-image datasets, downloaded into --data-dir on first use and then held in memory."""

from __future__ import annotations

import os

from cnncli.data._registry import register_dataset
from cnncli.errors import UsageError

# What the CIFAR release's pickles hold (numpy arrays inside dicts, lists, strings and numbers) and nothing else:
# any other global in a file (os.system, builtins.eval, ...) is refused instead of being called.
_ARRAY_GLOBALS = {
    (m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")
}
_ARRAY_GLOBALS |= {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
}


def read_array_pickle(path: str):
    """Unpickle a dataset file that may hold only arrays, lists, dicts, strings and numbers (the CIFAR format)."""
    import pickle

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if (module, name) in _ARRAY_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"{module}.{name}")

    from cnncli.fileio import check_input

    check_input(path, "dataset file", kind="data")
    try:
        with open(path, "rb") as f:
            return ArraysOnly(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise UsageError(
            f"refusing to load {path}: it holds a Python object ({e}) that a dataset file never "
            "contains and that could run code",
            "replace it with the original release file",
        ) from None
    except Exception as e:
        raise UsageError(
            f"unreadable dataset file {path}: {type(e).__name__}: {e}", "replace it with the original release file"
        ) from None


def _safe_cifar(base):
    """torchvision's CIFAR class (download with the archive's md5 check, folder layout, attributes) reading its
    files with `read_array_pickle` instead of `pickle.load`. An extracted file's own md5 is relaxed to "it
    exists" so prepared copies and test fixtures in the real format load; the safe unpickler is what guards them."""
    import numpy as np
    from torchvision.datasets.vision import VisionDataset

    class SafeCIFAR(base):
        train_list = [[f, None] for f, _ in base.train_list]
        test_list = [[f, None] for f, _ in base.test_list]
        meta = {**base.meta, "md5": None}

        def __init__(self, root, train: bool = True, download: bool = False):
            VisionDataset.__init__(self, root)
            self.train = train
            if download:
                self.download()
            if not self._check_integrity():
                raise RuntimeError("Dataset not found or corrupted")
            folder = os.path.join(self.root, self.base_folder)
            data, self.targets = [], []
            for name, _ in self.train_list if train else self.test_list:
                entry = read_array_pickle(os.path.join(folder, name))
                try:
                    data.append(np.asarray(entry["data"], dtype=np.uint8))
                    self.targets.extend(int(v) for v in entry["labels" if "labels" in entry else "fine_labels"])
                except (KeyError, TypeError, ValueError) as e:
                    raise UsageError(
                        f"malformed dataset file {os.path.join(folder, name)}: {type(e).__name__}: {e}",
                        "replace it with the original release file",
                    ) from None
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            meta = read_array_pickle(os.path.join(folder, self.meta["filename"]))
            self.classes = [str(c) for c in meta[self.meta["key"]]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    SafeCIFAR.__name__ = f"Safe{base.__name__}"
    return SafeCIFAR


def _tv_class(name: str):
    """torchvision's dataset class: CIFAR read with the safe unpickler, SVHN's local md5 check relaxed."""
    import torchvision.datasets as tvd

    base = getattr(tvd, name)
    if name in ("CIFAR10", "CIFAR100"):
        return _safe_cifar(base)
    if name == "SVHN":
        # the per-split md5 is kept for downloads (download() reads split_list); only the local check is relaxed
        class LocalSVHN(base):
            def _check_integrity(self):
                return os.path.isfile(os.path.join(self.root, self.filename))

        return LocalSVHN
    return base


def _gate_files(cls, name: str, data_dir: str) -> None:
    """The reading gate for the files torchvision will open: a FIFO or a device among them would block or never end
    inside torchvision's reader, so every file in the dataset's folders is checked first."""
    from cnncli.fileio import check_input

    if os.path.lexists(data_dir):
        check_input(data_dir, "--data-dir folder", folder=True)
        if not os.path.isdir(data_dir):
            raise UsageError(f"--data-dir {data_dir} is a file", "give the folder that holds the datasets")
    folders = {os.path.join(data_dir, getattr(cls, "base_folder", "") or name), os.path.join(data_dir, name)}
    for top in sorted(f for f in folders if os.path.isdir(f)):
        for folder, _, files in os.walk(top):
            for f in files:
                check_input(os.path.join(folder, f), "dataset file", kind="data")
    if name == "SVHN":
        for f in os.listdir(data_dir) if os.path.isdir(data_dir) else ():
            if f.endswith(".mat"):
                check_input(os.path.join(data_dir, f), "dataset file", kind="data")


def _open(info, name: str, data_dir: str, train: bool, download: bool):
    cls = _tv_class(name)
    _gate_files(cls, name, data_dir)
    kwargs = {"split": "train" if train else "test"} if name == "SVHN" else {"train": train}
    try:
        return cls(data_dir, download=False, **kwargs)
    except RuntimeError as e:  # torchvision's "not found": try the download below
        if "not found" not in str(e).lower() and "corrupted" not in str(e).lower():
            raise _unreadable(info, data_dir, e) from None
    except (ValueError, KeyError, IndexError, EOFError, AssertionError, OSError) as e:  # files there, but broken
        raise _unreadable(info, data_dir, e) from None
    if download:
        try:
            return cls(data_dir, download=True, **kwargs)
        except Exception as e:  # offline, or a server problem
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise UsageError(
                f"dataset {info.name} is not in {data_dir} and could not be downloaded ({reason})",
                f"put {info.files} in {data_dir}, or set --data-dir / CNN_DATA_DIR",
            ) from None
    raise UsageError(f"dataset {info.name} is not in {data_dir}", f"put {info.files} there")


def _unreadable(info, data_dir: str, e: Exception) -> UsageError:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return UsageError(
        f"the {info.name} files in {data_dir} are unreadable: {type(e).__name__}: {msg}",
        f"replace them with {info.files} from the release, or delete them to download again",
    )


def _to_uint8_nchw(data):
    import torch

    t = torch.as_tensor(data)
    if t.dim() == 3:  # MNIST: [N, H, W]
        return t[:, None].contiguous()
    if t.shape[-1] in (1, 3):  # CIFAR: [N, H, W, C]
        return t.permute(0, 3, 1, 2).contiguous()
    return t.contiguous()  # SVHN: [N, C, H, W]


def _load(info, name: str, data_dir: str, download: bool):
    import torch

    from cnncli.data.datasets import tensor_dataset

    tr = _open(info, name, data_dir, True, download)
    te = _open(info, name, data_dir, False, download)

    def labels(ds):
        return torch.as_tensor(ds.targets if hasattr(ds, "targets") else ds.labels).long()

    classes = list(getattr(tr, "classes", None) or [str(i) for i in range(10)])
    return tensor_dataset(info, _to_uint8_nchw(tr.data), labels(tr), _to_uint8_nchw(te.data), labels(te), classes)


_CIFAR = {"crop_padding": 4, "flip": True, "batch_size": 256, "source": "torchvision"}


@register_dataset(
    epochs=30,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    files="cifar-10-python.tar.gz or its extracted cifar-10-batches-py/",
    **_CIFAR,
)
def cifar10(info, *, data_dir, image_size=None, download=True, arg=None):
    """CIFAR-10: 60,000 3x32x32 colour images in 10 classes."""
    return _load(info, "CIFAR10", data_dir, download)


@register_dataset(
    epochs=40,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    files="cifar-100-python.tar.gz or its extracted cifar-100-python/",
    **_CIFAR,
)
def cifar100(info, *, data_dir, image_size=None, download=True, arg=None):
    """CIFAR-100: 60,000 3x32x32 colour images in 100 classes."""
    return _load(info, "CIFAR100", data_dir, download)


@register_dataset(
    epochs=8,
    batch_size=256,
    mean=(0.1307,),
    std=(0.3081,),
    crop_padding=2,
    source="torchvision",
    files="MNIST/raw/ with train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte",
)
def mnist(info, *, data_dir, image_size=None, download=True, arg=None):
    """MNIST: 70,000 1x28x28 handwritten digits."""
    return _load(info, "MNIST", data_dir, download)


@register_dataset(
    name="fashion-mnist",
    epochs=15,
    batch_size=256,
    mean=(0.2860,),
    std=(0.3530,),
    crop_padding=2,
    flip=True,
    source="torchvision",
    files="FashionMNIST/raw/ with the four *-idx*-ubyte files",
)
def fashion_mnist(info, *, data_dir, image_size=None, download=True, arg=None):
    """Fashion-MNIST: 70,000 1x28x28 images of clothing in 10 classes."""
    return _load(info, "FashionMNIST", data_dir, download)


@register_dataset(
    epochs=15,
    batch_size=256,
    mean=(0.4377, 0.4438, 0.4728),
    std=(0.1980, 0.2010, 0.1970),
    crop_padding=2,
    source="torchvision",
    files="train_32x32.mat and test_32x32.mat",
)
def svhn(info, *, data_dir, image_size=None, download=True, arg=None):
    """SVHN: 99,289 3x32x32 house-number digits (the train and test splits)."""
    return _load(info, "SVHN", data_dir, download)
