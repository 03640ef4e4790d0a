"""The registry: conformance over every built-in model, published figures, name resolution, user models."""

import json

import pytest
import torch
import torchvision
from conftest import run_cnn

from cnncli.errors import UsageError
from cnncli.models import get_model, list_models, resolve
from cnncli.models._factory import count_params
from cnncli.models._registry import register_model

BUILTIN = [m.name for m in list_models()]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_model_conforms(name):
    info = resolve(name)
    torch.manual_seed(0)
    model = get_model(name).eval()
    c, h, w = info.input_size
    with torch.no_grad():  # (eval mode: batch 1 is as good a test of the declared shape as any)
        y = model(torch.randn(1, c, h, w))
    assert tuple(y.shape) == (1, info.num_classes), "declared classes"
    assert torch.isfinite(y).all()
    assert info.source == "builtin" and info.family and info.description
    n = sum(p.numel() for p in model.parameters())
    assert count_params(info) == n, "meta-device count equals the real model"


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_model_adapts_to_small_grey_data(name):
    model = get_model(name, num_classes=7, in_channels=1, image_size=(32, 32)).eval()
    with torch.no_grad():
        assert tuple(model(torch.randn(2, 1, 32, 32)).shape) == (2, 7)


def test_resnet_imagenet_stem_is_torchvision_exactly():
    ours = get_model("resnet50")
    ref = torchvision.models.resnet50()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in ref.state_dict().items()]
    small = get_model("resnet18", num_classes=10, image_size=(32, 32))
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)


@pytest.mark.parametrize(
    "name,params",
    [
        ("resnet18", 11_689_512),
        ("resnet50", 25_557_032),
        ("vgg16", 138_357_544),
        ("mobilenet_v2", 3_504_872),
        ("resnet20", 269_722),
    ],
)
def test_published_parameter_counts(name, params):
    from cnncli.models.detect import build_on_meta

    info = resolve(name)  # on the meta device: the count is the real model's (test_builtin_model_conforms)
    model = build_on_meta(name, info.num_classes, info.input_size[0], info.input_size[1:])
    assert sum(p.numel() for p in model.parameters()) == params


def test_family_names_resolve_to_defaults():
    assert resolve("resnet").name == "resnet18"
    assert resolve("vgg").name == "vgg11"
    assert resolve("lenet").name == "lenet5"


def test_unknown_name_suggests_close_matches():
    with pytest.raises(UsageError, match="resnet"):
        resolve("resnet19x")


def test_wildcards_and_sources():
    assert {m.name for m in list_models("vgg1[16]")} == {"vgg11", "vgg16"}
    tv = list_models("efficientnet_b0", source="torchvision")
    assert [m.name for m in tv] == ["efficientnet_b0"] and tv[0].source == "torchvision"
    assert len(list_models("*", source="all")) > len(BUILTIN) + 50


def test_torchvision_models_through_the_same_interface():
    m = get_model("tv:squeezenet1_0", num_classes=5, in_channels=1, image_size=(64, 64)).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 64, 64)).shape == (1, 5)
    assert resolve("efficientnet_b0").source == "torchvision"


def test_duplicate_registration_rejected():
    with pytest.raises(ValueError, match="twice"):

        @register_model(family="lenet")
        def lenet5(*, num_classes: int = 10, in_channels: int = 3, image_size=(32, 32)):
            return None


def test_user_model_file(tmp_path):
    f = tmp_path / "mynet.py"
    f.write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())\n"
        "        self.fc = nn.Linear(8, num_classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.body(x))\n"
    )
    m = get_model(f"{f}:Net", num_classes=4, in_channels=1, image_size=(16, 16))
    assert m(torch.randn(1, 1, 16, 16)).shape == (1, 4)
    p = run_cnn("summary", f"{f}:Net", "--in", "1x16x16", "--num-classes", "4", "--json", check=0)
    assert json.loads(p.stdout)["params"] == 8 * 9 + 8 + 8 * 4 + 4


def test_user_model_file_that_fails_to_import(tmp_path):
    f = tmp_path / "broken.py"
    f.write_text("import torch\nraise RuntimeError('boom at import')\n")
    p = run_cnn("summary", f"{f}:Net")
    assert p.returncode == 2
    assert str(f) in p.stderr and "boom at import" in p.stderr and "Traceback" not in p.stderr


def test_models_command_json_and_filter():
    p = run_cnn("models", "res*", "--json", check=0)
    rows = json.loads(p.stdout)
    names = {r["name"] for r in rows}
    assert {"resnet18", "resnet50", "resnet20"} <= names and "vgg11" not in names
    r18 = next(r for r in rows if r["name"] == "resnet18")
    assert r18["params"] == 11_689_512 and r18["family"] == "resnet" and r18["source"] == "builtin"


def test_unknown_model_exit_2():
    p = run_cnn("summary", "resnett")
    assert p.returncode == 2 and "did you mean" in p.stderr and len(p.stderr.strip().splitlines()) == 1
