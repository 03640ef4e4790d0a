"""Folder images decoded once (`cnn train --cache`) and JPEGs decoded at the scale they are needed (data/cache.py,
data/images.py)."""

import os
import re

import numpy as np
import pytest
import torch
from conftest import run_cnn
from PIL import Image

from cnncli.data.cache import CACHED_SPLITS, DiskStore, attach, choose
from cnncli.data.images import load_resized, read_image, resize


def _photo(path, h, w, seed, colour=(200, 60, 40)):
    """A camera-like JPEG: smooth noise, a coloured disc whose place depends on the seed."""
    rng = np.random.default_rng(seed)
    small = rng.random((h // 64 + 2, w // 64 + 2, 3))
    img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)).copy()
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.integers(h // 4, 3 * h // 4), rng.integers(w // 4, 3 * w // 4)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < (min(h, w) // 5) ** 2] = colour
    Image.fromarray(img).save(path, quality=90)


def _folder(root, per_class=6, size=(300, 400), seed=0):
    for k, colour in enumerate(((200, 60, 40), (40, 60, 200))):
        os.makedirs(root / f"c{k}", exist_ok=True)
        for i in range(per_class):
            _photo(root / f"c{k}" / f"{i}.jpg", *size, seed * 1000 + k * 100 + i, colour)
    return root


# ------------------------------------------------------------------------------------------------ decoding


def test_a_jpeg_is_decoded_at_the_smallest_scale_that_covers_the_need(tmp_path):
    _photo(tmp_path / "p.jpg", 1536, 2048, 0)
    assert tuple(read_image(str(tmp_path / "p.jpg"), 3).shape) == (3, 1536, 2048)
    assert tuple(read_image(str(tmp_path / "p.jpg"), 3, draft=(128, 128)).shape) == (3, 192, 256)  # 1/8
    assert tuple(read_image(str(tmp_path / "p.jpg"), 3, draft=(500, 500)).shape) == (3, 768, 1024)  # 1/2 covers it
    full = resize(read_image(str(tmp_path / "p.jpg"), 3), (128, 160)).float()
    fast = load_resized(str(tmp_path / "p.jpg"), 3, (128, 160)).float()
    assert (full - fast).abs().mean() < 2.0  # the same picture, to a grey level or two


def test_a_turned_photo_is_drafted_upright_and_never_below_the_need(tmp_path):
    """EXIF orientation 6 (a phone held upright): stored 2048 wide, shown 2048 tall; the draft covers the upright
    need in both axes."""
    _photo(tmp_path / "p.jpg", 1536, 2048, 1)
    with Image.open(tmp_path / "p.jpg") as im:
        exif = im.getexif()
        exif[0x0112] = 6
        im.save(tmp_path / "turned.jpg", exif=exif, quality=90)
    img = read_image(str(tmp_path / "turned.jpg"), 3, draft=(300, 100))
    assert img.shape[1] > img.shape[2] and img.shape[1] >= 300 and img.shape[2] >= 100
    assert tuple(img.shape[1:]) == (512, 384)  # 1/4: 1/8 would give 256 rows, fewer than the 300 needed


def test_other_formats_decode_in_full(tmp_path):
    Image.effect_noise((300, 200), 50).convert("RGB").save(tmp_path / "p.png")
    assert tuple(read_image(str(tmp_path / "p.png"), 3, draft=(20, 20)).shape) == (3, 200, 300)


# ------------------------------------------------------------------------------------------------ the cache


def test_the_plan_auto_ram_disk_and_a_ram_cache_that_would_not_fit():
    assert choose("auto", 100, 1000, available=10**9).mode == "ram"
    plan = choose("auto", 10**6, 10**5, available=10**9)
    assert plan.mode == "none" and "more than 25% of the 1.0 GB available" in plan.reason
    assert choose("disk", 10**6, 10**5, available=10**9).in_ram is False
    assert choose("disk", 10, 10, available=10**9).in_ram is True
    from cnncli.errors import UsageError

    with pytest.raises(UsageError, match="would take 100.0 GB, more than 75% of the 1.0 GB"):
        choose("ram", 10**6, 10**5, available=10**9)


def _data(root, image_size=(64, 80)):
    from dataclasses import replace

    from cnncli.data import load_dataset

    return replace(load_dataset(f"folder:{root}"), image_size=image_size)


def test_cached_batches_are_the_uncached_batches(tmp_path):
    """The cache holds the loader's own pixels: train (cropped and flipped) and val batches are bit-identical, and
    the RAM size said in the log is the tensor's."""
    from cnncli.data.loader import make_loader

    data = _data(_folder(tmp_path / "f"))
    said = []
    cached = attach(data, "ram", str(tmp_path / "dd"), said.append)
    nbytes = sum(cached.cached(s).pixels.nbytes for s in CACHED_SPLITS)
    assert nbytes == 12 * 3 * 64 * 80 and f"{nbytes / 1000:.1f} KB" in said[-1], said
    for split, train in (("train", True), ("val", False)):
        a, b = (make_loader(d, split, batch_size=4, train=train, seed=3, workers=0) for d in (data, cached))
        for epoch in (0, 1):
            a.set_epoch(epoch), b.set_epoch(epoch)
            for (xa, ya), (xb, yb) in zip(a, b, strict=True):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_cached_run_trains_exactly_as_an_uncached_one(tmp_path):
    _folder(tmp_path / "f")
    runs = {}
    for mode in ("none", "ram"):
        p = run_cnn(
            "train", "smallcnn", "--data", f"folder:{tmp_path / 'f'}", "--img-size", "32", "--epochs", "2",
            "--cache", mode, "--precision", "32", "--project", tmp_path, "--name", mode, "--json",
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        assert ("cached in RAM" in p.stderr) == (mode == "ram")
        runs[mode] = torch.load(tmp_path / mode / "best.pt", weights_only=False)["state_dict"]
    assert all(torch.equal(runs["none"][k], runs["ram"][k]) for k in runs["none"])


def test_the_disk_cache_notices_replaced_images_and_reads_only_them(tmp_path):
    root = _folder(tmp_path / "f", per_class=4)
    data = _data(root, (48, 48))
    dd = str(tmp_path / "dd")
    said = []
    attach(data, "disk", dd, said.append)
    assert "0 from the disk cache, 8 decoded" in said[-1]
    attach(data, "disk", dd, said.append)
    assert "8 from the disk cache, 0 decoded" in said[-1]
    changed = sorted(root.glob("c0/*.jpg"))[:2]
    for i, path in enumerate(changed):  # same names, new pictures
        _photo(path, 300, 400, 999 + i, (20, 220, 20))
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a second later, whatever the clock's grain
    again = attach(data, "disk", dd, said.append)
    assert "6 from the disk cache, 2 decoded" in said[-1]
    for split in CACHED_SPLITS:
        for (path, _), pixels in zip(again.split(split), again.cached(split).pixels):
            assert torch.equal(pixels, load_resized(path, 3, (48, 48)))  # the new pixels, not the old ones
    store = DiskStore.for_dataset(dd, str(root), (3, 48, 48))
    assert len(os.listdir(store.folder)) == 8  # the replaced images' old files are gone


def test_a_disk_cache_too_large_for_memory_is_read_file_by_file(tmp_path, monkeypatch):
    import cnncli.data.cache as cache

    root = _folder(tmp_path / "f", per_class=3)
    monkeypatch.setattr(cache, "available_memory", lambda: 1000)  # a machine with almost no memory left
    got = attach(_data(root, (40, 40)), "disk", str(tmp_path / "dd"), [].append)
    pixels = got.cached("train")
    assert isinstance(pixels, cache._FilePixels)
    assert torch.equal(pixels[0], load_resized(got.split("train")[0][0], 3, (40, 40)))


def test_a_cache_that_cannot_be_written_is_a_warning_not_a_lost_run(tmp_path):
    _folder(tmp_path / "f", per_class=3)
    (tmp_path / "file").write_text("not a folder")
    p = run_cnn(
        "train", "smallcnn", "--data", f"folder:{tmp_path / 'f'}", "--img-size", "32", "--epochs", "1",
        "--cache", "disk", "--data-dir", tmp_path / "file" / "dd", "--project", tmp_path, "--name", "r",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert re.search(r"warning: cannot write the disk cache .*: this run keeps its images in RAM", p.stderr), p.stderr
    assert (tmp_path / "r" / "best.pt").is_file() and (tmp_path / "file").read_text() == "not a folder"


def test_a_progress_line_while_a_cache_is_built(tmp_path, monkeypatch):
    import cnncli.data.cache as cache

    monkeypatch.setattr(cache, "PROGRESS_EVERY", 0.0)
    said = []
    attach(_data(_folder(tmp_path / "f", per_class=3), (40, 40)), "ram", "", said.append)
    assert any(re.fullmatch(r"caching 6 images at 3x40x40 \.\.\. \d+%", line) for line in said), said
