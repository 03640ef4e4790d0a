"""`cnn fcn` and `cnn scoremap`: conversion, the sliding-window property, score maps on generated scenes."""

import json
import os

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, run_cnn

from cnncli.analysis.fcn import to_fully_convolutional, window_origin
from cnncli.checkpoint import Checkpoint
from cnncli.errors import UsageError
from cnncli.models import get_model, model_from_checkpoint


def test_lenet_score_cell_equals_classifier_on_its_window():
    torch.manual_seed(0)
    clf = get_model("lenet5").eval()
    conv = to_fully_convolutional(clf, (3, 32, 32))
    assert conv.stride == (4, 4) and conv.receptive_field == (32, 32) and conv.offset == (0, 0)
    g = torch.Generator().manual_seed(1)
    for h, w in ((64, 64), (45, 77), (32, 36)):
        x = torch.randn(2, 3, h, w, generator=g)
        with torch.no_grad():
            maps = conv.model(x)
            assert maps.shape[2:] == ((h - 32) // 4 + 1, (w - 32) // 4 + 1)
            for i in range(maps.shape[2]):
                for j in range(maps.shape[3]):
                    top, left = window_origin(conv.as_dict(), i, j)  # from the recorded stride and offset
                    assert (top, left) == (4 * i, 4 * j)
                    win = x[:, :, top : top + 32, left : left + 32]
                    torch.testing.assert_close(maps[:, :, i, j], clf(win), rtol=1e-4, atol=1e-5)


def test_lenet_64x64_gives_10x9x9(tmp_path):
    ck = make_checkpoint(tmp_path / "lenet.pt", "lenet5")
    out = json.loads(run_cnn("fcn", ck, "--json", check=0).stdout)
    assert out["stride"] == [4, 4] and out["receptive_field"] == [32, 32] and out["max_abs_diff"] < 1e-4
    model = model_from_checkpoint(Checkpoint.load(out["path"]))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10, 9, 9)
    # the converted checkpoint is understood by summary and eval-at-training-size paths
    s = json.loads(run_cnn("summary", out["path"], "--json", check=0).stdout)
    assert s["output"] == [10, 1, 1] and s["params"] == 62006
    # no overwrite without --force
    again = run_cnn("fcn", ck)
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.parametrize(
    "name,size",
    [
        ("resnet18", (3, 32, 32)),
        ("resnet18", (3, 224, 224)),
        ("vgg11_bn", (3, 32, 32)),
        ("vgg11", (3, 224, 224)),  # the classic head: fc6 on 512x7x7 becomes a 7x7 conv
        ("mobilenet_v2", (3, 64, 64)),
        ("resnet20", (3, 32, 32)),
        ("smallcnn", (3, 32, 32)),
        ("mlp", (1, 28, 28)),
    ],
)
def test_families_convert_and_verify(name, size):
    torch.manual_seed(0)
    model = get_model(name, num_classes=10, in_channels=size[0], image_size=size[1:])
    conv = to_fully_convolutional(model, size)
    assert conv.max_abs_diff < 1e-3
    bigger = (size[1] + 2 * conv.stride[0], size[2] + conv.stride[1])
    with torch.no_grad():
        y = conv.model.eval()(torch.randn(1, size[0], *bigger))
    assert y.shape[2:] == (3, 2)


def test_unrecognised_head_is_exit_2_naming_the_layer(tmp_path):
    f = tmp_path / "odd.py"
    f.write_text(
        "import torch.nn as nn\n"
        "class Odd(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(in_channels, 4, 3)\n"
        "        self.norm = nn.LayerNorm(4 * 30 * 30)\n"
        "        self.fc = nn.Linear(4 * 30 * 30, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.norm(self.conv(x).flatten(1)))\n"
    )
    with pytest.raises(UsageError, match=r"norm \(LayerNorm\)"):
        to_fully_convolutional(get_model(f"{f}:Odd"), (3, 32, 32))


def test_scoremap_finds_the_regions_of_a_lines_scene(lines_run, tmp_path):
    out = json.loads(
        run_cnn(
            "scoremap",
            lines_run["best_checkpoint"],
            "--scene",
            "lines",
            "--scene-size",
            "192x256",
            "-o",
            tmp_path,
            "--json",
            check=0,
        ).stdout
    )
    assert out["scores_shape"] == [2, 192 - 31, 256 - 31]
    assert out["region_agreement"] >= 0.85
    scores = np.load(out["npy"])
    assert scores.shape == tuple(out["scores_shape"]) and np.allclose(scores.sum(0), 1, atol=1e-5)
    assert open(out["png"], "rb").read(4) == b"\x89PNG"
    assert set(out["argmax_counts"]) == {"horizontal", "vertical"}


def test_converted_checkpoint_evaluates_like_the_classifier(lines_run, tmp_path):
    fcn = json.loads(run_cnn("fcn", lines_run["best_checkpoint"], "-o", tmp_path / "f.pt", "--json", check=0).stdout)
    assert fcn["stride"] == [1, 1] and fcn["receptive_field"] == [40, 40]  # 9x9 filters, then the 32x32 pool
    ev = json.loads(run_cnn("eval", fcn["path"], "--json", check=0).stdout)
    assert ev["accuracy"] == pytest.approx(lines_run["test_accuracy"], abs=2e-4)


def test_scoremap_images_and_class_heatmap(tmp_path):
    from PIL import Image

    ck = make_checkpoint(tmp_path / "lenet.pt", "lenet5")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    p = run_cnn("scoremap", ck, tmp_path / "a.png", "-o", tmp_path / "maps", "--class", "c3", "--json", check=0)
    out = json.loads(p.stdout)
    assert out["scores_shape"] == [10, (80 - 32) // 4 + 1, (100 - 32) // 4 + 1]
    assert os.path.exists(out["png"]) and "c3" in out["png"]
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "small.png")
    small = run_cnn("scoremap", ck, tmp_path / "small.png", "-o", tmp_path / "maps")
    assert small.returncode == 2 and "smaller than the training size" in small.stderr
    bad = run_cnn("scoremap", ck, tmp_path / "a.png", "--class", "nope")
    assert bad.returncode == 2 and "unknown class" in bad.stderr


def test_scoremap_keeps_the_maps_of_images_with_the_same_name(tmp_path):
    from PIL import Image

    ck = make_checkpoint(tmp_path / "lenet.pt", "lenet5")
    paths = []
    for folder, value in (("a", 0), ("b", 255)):
        (tmp_path / folder).mkdir()
        Image.fromarray(np.full((40, 40, 3), value, np.uint8)).save(tmp_path / folder / "x.png")
        paths.append(str(tmp_path / folder / "x.png"))
    out = json.loads(run_cnn("scoremap", ck, *paths, "-o", tmp_path / "maps", "--json", check=0).stdout)
    npys = [r["npy"] for r in out["images"]]
    assert [os.path.basename(p) for p in npys] == ["x.npy", "x-2.npy"]
    assert not np.array_equal(np.load(npys[0]), np.load(npys[1]))  # two images, two different maps


@pytest.mark.parametrize("cmd", [["fcn"], ["export", "--onnx"], ["export", "--format", "pt2"]])
def test_an_output_never_replaces_the_input(tmp_path, cmd):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    before = open(ck, "rb").read()
    p = run_cnn(cmd[0], ck, *cmd[1:], "-o", ck, "--force")
    assert p.returncode == 2 and "is the input file" in p.stderr
    assert open(ck, "rb").read() == before
    p = run_cnn(cmd[0], ck, *cmd[1:], "-o", tmp_path)
    assert p.returncode == 2 and "is a folder" in p.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]
