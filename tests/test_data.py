"""Datasets through the real torchvision loaders on files in the real formats, and the tensor loader."""

import os

import pytest
import torch
from fixtures import write_cifar10, write_image_folder, write_mnist, write_svhn

from cnncli.data import load_dataset, make_loader
from cnncli.data.lines import generate, scene
from cnncli.errors import UsageError


def test_cifar10_pickles_through_torchvision(tmp_path):
    write_cifar10(str(tmp_path), n_train=500, n_test=200)
    d = load_dataset("cifar10", str(tmp_path))
    x, y = d.split("train")
    assert x.dtype == torch.uint8 and tuple(x.shape[1:]) == (3, 32, 32)
    assert len(x) + len(d.split("val")[0]) == 500 and len(d.split("test")[0]) == 200
    assert d.classes[0] == "airplane" and d.flip and d.crop_padding == 4
    assert d.mean == (0.4914, 0.4822, 0.4465)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_file_is_refused_without_running_it(tmp_path):
    """CIFAR batches are pickles: a file holding anything but arrays, lists, dicts, strings and numbers is refused
    by `cnn train` and `cnn eval` before it can run, and the run folder is not created."""
    import pickle

    from conftest import make_checkpoint, run_cnn

    data = tmp_path / "data"
    write_cifar10(str(data), n_train=50, n_test=20)
    marker = tmp_path / "pwned"
    with open(data / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Payload(marker), "labels": [0]}, f)
    ck = make_checkpoint(tmp_path / "m.pt", "resnet20", dataset="cifar10")
    for args in (["train", "resnet20", "--data", "cifar10", "--project", tmp_path / "runs"], ["eval", ck]):
        p = (
            run_cnn(*args, "--data-dir", data, "--split", "train")
            if args[0] == "eval"
            else run_cnn(*args, "--data-dir", data)
        )
        assert p.returncode == 2, p.stderr
        assert "refusing to load" in p.stderr and "posix.system" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists() and not (tmp_path / "runs").exists()


def test_mnist_idx_through_torchvision(tmp_path):
    write_mnist(str(tmp_path))
    d = load_dataset("mnist", str(tmp_path))
    assert d.input_size == (1, 28, 28) and d.num_classes == 10 and not d.flip
    write_mnist(str(tmp_path), folder="FashionMNIST")
    assert load_dataset("fashion-mnist", str(tmp_path)).classes[0] == "T-shirt/top"


def test_svhn_mat_files_through_torchvision(tmp_path):
    write_svhn(str(tmp_path))
    d = load_dataset("svhn", str(tmp_path))
    x, y = d.split("test")
    assert x.shape == (100, 3, 32, 32) and y.min() >= 0 and y.max() <= 9  # torchvision maps label 10 to 0
    assert not d.flip


def test_missing_dataset_offline_says_where_to_put_files(tmp_path, monkeypatch):
    # no network here: the real download is attempted and fails; the error names the folder and files
    import socket

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", lambda *a, **k: no_network())
    with pytest.raises(UsageError) as e:
        load_dataset("cifar10", str(tmp_path / "empty"))
    assert "cifar-10-python.tar.gz" in str(e.value) and str(tmp_path / "empty") in str(e.value)


def test_lines_deterministic_and_balanced():
    a, ya = generate(500, seed=3)
    b, yb = generate(500, seed=3)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    assert 0.4 < ya.float().mean() < 0.6
    c, _ = generate(500, seed=4)
    assert not torch.equal(a, c)
    # horizontal lines vary along rows (profile over rows has peaks), vertical ones along columns
    img = a[ya == 0][:50].float()
    assert (img.mean(3).std(2) > img.mean(2).std(2)).float().mean() > 0.9


def test_lines_scene_has_both_regions():
    img, labels = scene(128, 192, (2, 3), seed=1)
    assert img.shape == (1, 128, 192) and labels.shape == (128, 192)
    assert set(labels.unique().tolist()) == {0, 1}


def test_digits_embedded():
    d = load_dataset("digits")
    total = sum(len(v[0]) for v in d.splits.values())
    assert total == 1797 and d.input_size == (1, 32, 32)


def test_tensor_loader_augments_per_batch_deterministically():
    d = load_dataset("fake")
    mk = lambda: make_loader(d, "train", batch_size=64, train=True, seed=5)  # noqa: E731
    l1, l2 = mk(), mk()
    b1, b2 = next(iter(l1)), next(iter(l2))
    assert torch.equal(b1[0], b2[0]) and torch.equal(b1[1], b2[1])
    # resuming at batch 3 gives exactly batch 3
    full = list(l1.batches(0))
    assert torch.equal(next(iter(l2.batches(3)))[0], full[3][0])
    l1.set_epoch(1)
    assert not torch.equal(next(iter(l1))[1], b1[1])
    assert abs(float(full[0][0].mean())) < 0.2  # normalized


def test_tensor_loader_crop_pads_with_zeros_and_shifts():
    x = torch.full((8, 1, 8, 8), 255, dtype=torch.uint8)
    from cnncli.data.loader import TensorLoader

    lo = TensorLoader(
        x,
        torch.zeros(8, dtype=torch.long),
        batch_size=8,
        mean=(0.0,),
        std=(1 / 255,),
        train=True,
        crop_padding=2,
        seed=0,
    )
    xb, _ = next(iter(lo))
    assert xb.shape == (8, 1, 8, 8)
    assert (xb == 0).any() and (xb == 255).any()  # some rows/cols came from the zero padding


def test_distributed_shards_cover_the_epoch():
    d = load_dataset("fake")
    shards = [make_loader(d, "train", batch_size=100, train=True, seed=1, rank=r, world_size=2) for r in (0, 1)]
    idx = [s._indices() for s in shards]
    assert len(idx[0]) == len(idx[1]) and not set(idx[0].tolist()) & set(idx[1].tolist())
    assert len(set(idx[0].tolist()) | set(idx[1].tolist())) == len(d.split("train")[0])


def test_folder_dataset_split_by_seed(tmp_path):
    write_image_folder(str(tmp_path / "imgs"))
    d = load_dataset(f"folder:{tmp_path / 'imgs'}", image_size=(32, 32))
    assert d.classes == ["cats", "dogs"] and len(d.split("train")) + len(d.split("val")) == 24
    lo = make_loader(d, "train", batch_size=4, train=True, workers=0)
    x, y = next(iter(lo))
    assert x.shape == (4, 3, 32, 32)


def test_unknown_dataset():
    with pytest.raises(UsageError, match="did you mean cifar10"):
        load_dataset("cifar11")
