"""`cnn inspect kernels|features|rf` on a trained line detector and on torchvision's resnet18 (random weights)."""

import json
import os

import numpy as np
import pytest
from conftest import run_cnn


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from PIL import Image

    from cnncli.data import lines

    root = tmp_path_factory.mktemp("inspect")
    x, y = lines.generate(2, seed=3)
    Image.fromarray(x[0, 0].numpy()).save(root / "line.png")
    a = np.zeros((96, 80, 3), np.uint8)
    a[20:70, 10:60] = (200, 80, 40)
    Image.fromarray(a).save(root / "shape.png")
    return root


def _png(path, min_side=150):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        assert im.format == "PNG" and min(im.size) >= min_side and max(im.size) <= 4000
        return np.asarray(im.convert("L")).std() > 1  # not a blank picture


def _run(*args):
    p = run_cnn("inspect", *map(str, args), "--json", check=0)
    return json.loads(p.stdout)


def test_the_line_detector_kernels_are_oriented(lines_run, images):
    """Chapter 24.5.2: one kernel responds to horizontal lines (DFT energy at vertical frequencies), the other to
    vertical ones; the last layer is a 2x2 channel opposition."""
    res = _run("kernels", lines_run["best_checkpoint"], "--dft", "-o", images / "k")
    assert res["layer"] == "features.0" and res["kernel_size"] == [9, 9] and _png(res["files"][0])
    axes = [(e["vertical_freq"], e["horizontal_freq"]) for e in res["dft_energy"]]
    prefers = [0 if v > h else 1 for v, h in axes]
    assert sorted(prefers) == [0, 1]  # one kernel each way
    assert all(max(v, h) > 0.6 for v, h in axes)  # concentrated along one axis
    w = res["head"]["weight"]
    assert len(w) == 2 and all((row[0] > 0) != (row[1] > 0) for row in w)  # oppositions: signs differ per row


def test_features_and_pca(lines_run, images):
    res = _run("features", lines_run["best_checkpoint"], images / "line.png", "-o", images / "f")
    assert res["layers"] == [{"layer": "features", "shape": [2, 32, 32]}] and _png(res["files"][0], 100)
    res = _run("features", "tv:resnet18", images / "shape.png", "--pca", "--in", "3x64x64", "-o", images / "f")
    assert [f["layer"] for f in res["layers"]][-2:] == ["layer3", "layer4"] and _png(res["files"][0])


def test_receptive_field_theoretical_and_measured(lines_run, images):
    res = _run("rf", lines_run["best_checkpoint"], images / "line.png", "-o", images / "r")
    assert res["receptive_field"] == [9.0, 9.0] and res["at"] == [16, 16] and _png(res["files"][0])
    res = _run("rf", "tv:resnet18", images / "shape.png", "--layer", "layer2", "--in", "3x64x64", "-o", images / "r")
    assert res["receptive_field"] == [99.0, 99.0] and res["jump"] == [8.0, 8.0]
    assert res["effective"] > 0.5  # the measured field is centre-weighted: most of it in the central half
    assert _png(res["files"][0])


def test_kernels_of_a_torchvision_model(images):
    res = _run("kernels", "tv:resnet18", "--layer", "layer1.0.conv1", "-o", images / "k")
    assert res["kernels"] == 64 and res["in_channels"] == 64 and _png(res["files"][0])


def test_the_chapters_experiments_on_the_default_line_detector(lines_run):
    """24.5.3: oriented structure that is not lines is still classified right; 24.5.4: horizontal lines modulated by
    cos(pi n/3) read as vertical, while the same images unmodulated (the control) read as horizontal."""
    import torch

    from cnncli.data import lines
    from cnncli.models.open import open_model

    ck = lines_run["best_checkpoint"]
    mod = json.loads(run_cnn("eval", ck, "--data", "lines-modulated", "--json", check=0).stdout)
    ood = json.loads(run_cnn("eval", ck, "--data", "lines-ood", "--json", check=0).stdout)
    assert mod["samples"] == 2000 and mod["accuracy"] <= 0.2
    assert ood["samples"] == 2000 and ood["accuracy"] >= 0.9
    opened = open_model(ck)
    x, y = lines.modulated(2000, seed=2, period=None)
    with torch.no_grad():
        control = float((opened.model.eval()(opened.preprocess.normalize(x)).argmax(1) == y).float().mean())
    assert control >= 0.9  # the modulation, not the lifted background, fools it


@pytest.mark.parametrize(
    "args,needle",
    [
        (["kernels", "tv:resnet18", "--layer", "nosuch"], "no layer 'nosuch'"),
        (["kernels", "tv:resnet18", "--layer", "bn1"], "has no kernels"),
        (["features", "tv:resnet18", "{root}/missing.png"], "image not found"),
        (["features", "tv:resnet18", "{root}/shape.png", "--layers", "fc"], "does not output a feature map"),
        (["rf", "tv:resnet18", "{root}/shape.png", "--at", "x"], "--at takes Y,X"),
        (["rf", "tv:resnet18", "{root}/shape.png", "--layer", "layer4", "--at", "50,50"], "outside"),
        (["kernels", "mlp"], "no Conv2d"),
    ],
)
def test_bad_input(images, args, needle):
    before = sorted(os.listdir(images))
    p = run_cnn("inspect", *[a.replace("{root}", str(images)) for a in args])
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert needle in p.stderr and sorted(os.listdir(images)) == before


INACTIVE_MODEL = """
import torch
import torch.nn as nn


class Bright(nn.Module):
    # one channel that is the image's brightness, rectified: 0 wherever the image is black
    def __init__(self, num_classes=2, in_channels=3):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 1, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-1.0)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(1, num_classes)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))
"""


def test_an_inactive_unit_is_said_and_an_active_one_shown(tmp_path):
    """A unit that is 0 on this image passes no gradient: the default (centre) one gives way to the most active
    unit, said; an asked one is exit 2 naming an active one (never "0% of the measured gradient" over nothing)."""
    from PIL import Image

    (tmp_path / "bright.py").write_text(INACTIVE_MODEL)
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:6, :6] = 255  # bright in the top-left corner only: the centre is black
    Image.fromarray(img).save(tmp_path / "corner.png")
    model = f"{tmp_path / 'bright.py'}:Bright"
    args = ("inspect", "rf", model, tmp_path / "corner.png", "--layer", "relu", "--in", "3x32x32", "-o", tmp_path)
    p = run_cnn(*args, "--json", check=0)
    assert "the centre unit 16,16 is inactive" in p.stderr
    y, x = json.loads(p.stdout)["at"]
    assert y < 6 and x < 6  # a unit that sees the bright corner
    bad = run_cnn(*args, "--at", "16,16")
    assert bad.returncode == 2 and "inactive" in bad.stderr and "try --at" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
