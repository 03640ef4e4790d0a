"""`cnn summary` against published figures and against `cnn shape --layers`."""

import json

import pytest
from conftest import run_cnn

from cnncli.analysis import arith
from cnncli.analysis.summary import summarize
from cnncli.models import get_model


@pytest.mark.parametrize(
    "name,params,gmacs",
    [
        ("resnet18", 11_689_512, 1.81),
        ("resnet50", 25_557_032, 4.09),
        ("vgg16", 138_357_544, 15.47),
        ("mobilenet_v2", 3_504_872, 0.30),
    ],
)
def test_published_figures(name, params, gmacs):
    res = summarize(get_model(name), (3, 224, 224)).as_json()
    assert res["params"] == params
    assert round(res["macs"] / 1e9, 2) == gmacs
    assert res["output"] == [1000]


def test_resnet18_cli_json():
    p = run_cnn("summary", "resnet18", "--in", "3x224x224", "--json", check=0)
    out = json.loads(p.stdout)
    assert set(out) >= {
        "model",
        "input",
        "output",
        "params",
        "trainable_params",
        "macs",
        "receptive_field",
        "jump",
        "memory",
        "layers",
    }
    assert out["params"] == 11_689_512 and round(out["macs"] / 1e9, 2) == 1.81
    assert out["receptive_field"] == "global"  # the average pool covers the whole map
    layer4 = next(r for r in out["layers"] if r["name"] == "layer4")
    assert layer4["receptive_field"] == [435, 435] and layer4["jump"] == [32, 32]
    assert layer4["receptive_field_kind"] == "exact"
    assert next(r for r in out["layers"] if r["name"] == "avgpool")["receptive_field"] == "global"


def test_lenet_summary_agrees_with_shape_layer_by_layer():
    spec = "conv(6,k=5) relu maxpool(2) conv(16,k=5) relu maxpool(2) flatten fc(120) relu fc(84) relu fc(10)"
    rows = arith.run_layers((3, 32, 32), spec)
    res = summarize(get_model("lenet5"), (3, 32, 32)).as_json()
    leaves = [r for r in res["layers"] if r["type"] not in ("LeNet5", "Sequential")]
    assert len(leaves) == len(rows)
    flat = False
    for leaf, row in zip(leaves, rows):
        assert tuple(leaf["output"]) == tuple(row.output), row.name
        assert leaf["params"] == row.params, row.name
        assert leaf["macs"] == row.macs, row.name
        flat = flat or row.name.startswith("fc")
        if flat:  # a Linear over the flattened map mixes every position: `cnn shape` shows the whole 32x32 input
            assert leaf["receptive_field"] == "global" and row.receptive_field == (32, 32), row.name
        else:
            assert tuple(leaf["receptive_field"]) == row.receptive_field, row.name
            assert tuple(leaf["jump"]) == row.jump, row.name
    assert res["params"] == arith.totals(rows)["params"] and res["macs"] == arith.totals(rows)["macs"]


def test_summary_text_table():
    p = run_cnn("summary", "lenet", "--in", "1x32x32", check=0)
    assert "features.0" in p.stdout and "61,706" in p.stdout and "receptive field global" in p.stdout


SEED_CNN = """
import torch
import torch.nn as nn


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 7, stride=2, padding=3)
        self.conv2 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.flatten = nn.Flatten()
        self.output_layer = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.flatten(x)
        return self.output_layer(x)
"""


def test_seed_cnn_matches_torchinfo(tmp_path):
    """The two-conv CNN of the seed text (004): torchinfo prints 14,938 params, 0.76 M mult-adds, input 0.01 MB,
    forward/backward pass 0.04 MB, params 0.06 MB."""
    (tmp_path / "seed.py").write_text(SEED_CNN)
    p = run_cnn("summary", f"{tmp_path / 'seed.py'}:CNN", "--in", "3x32x32", "--json", check=0)
    out = json.loads(p.stdout)
    assert out["params"] == 14_938 and round(out["macs"] / 1e6, 2) == 0.76
    mem = out["memory"]
    assert (round(mem["input"] / 1e6, 2), round(mem["forward_backward"] / 1e6, 2), round(mem["params"] / 1e6, 2)) == (
        0.01,
        0.04,
        0.06,
    )
    assert [r["receptive_field"] for r in out["layers"][1:]] == [[7, 7], [11, 11], [11, 11], "global"]
    assert sum(r["macs"] for r in out["layers"]) == out["macs"]


@pytest.mark.parametrize("name", ["vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "resnet50"])
def test_rows_add_up_to_the_total(name):
    """Each row counts the operations not listed below it (attention's matrix products sit in the attention
    module's own row), so the rows sum to the total at every depth."""
    from cnncli.models.detect import build_on_meta

    model = build_on_meta("tv:" + name, 1000, 3, (224, 224))
    for depth in (1, 3):
        res = summarize(model, (3, 224, 224), depth=depth, measure=False).as_json()
        assert sum(r["macs"] for r in res["layers"]) == res["macs"], depth
        top = [r for r in res["layers"] if r["depth"] == 1]
        assert sum(r["macs_total"] for r in top) + res["layers"][0]["macs"] == res["macs"]


def test_attention_is_counted():
    """vit_b_16: 17.56 G with attention's matrix products (11.27 G without them, the old figure)."""
    from cnncli.models.detect import build_on_meta

    res = summarize(build_on_meta("tv:vit_b_16", 1000, 3, (224, 224)), (3, 224, 224), depth=4, measure=False).as_json()
    assert round(res["macs"] / 1e9, 2) == 17.56
    attn = next(r for r in res["layers"] if r["name"] == "encoder.layers.encoder_layer_0.self_attention")
    # q/k/v and output projections (4 x 197 x 768^2) plus q@k^T and attn@v (2 x 197^2 x 768)
    assert attn["macs"] == 4 * 197 * 768 * 768 + 2 * 197 * 197 * 768


@pytest.mark.parametrize(
    "name,row,jump",
    [
        ("tv:vit_b_16", "encoder", [16, 16]),  # a class token ahead of the 14x14 grid of the 16-pixel patches
        ("timm:deit_tiny_distilled_patch16_224", "blocks", [16, 16]),  # class and distillation tokens
        ("timm:mixer_s16_224", "blocks", [16, 16]),  # no extra token
        ("timm:levit_128s", "stages.2", None),  # a 4x4 grid made by attention: unknown, not 224/4 = 56 (it is 64)
    ],
)
def test_a_global_row_of_tokens_steps_by_its_grids_stride(name, row, jump):
    """#29: tokens mixed by attention still sit on the grid they were cut from; its stride comes from the exact row
    upstream with as many tokens, never from dividing the image by a token count."""
    from cnncli.models.detect import build_on_meta

    if name.startswith("timm:"):
        pytest.importorskip("timm")  # in the [dev] extra: CI runs these
    res = summarize(build_on_meta(name, 1000, 3, (224, 224)), (3, 224, 224), depth=2, measure=False).as_json()
    rows = {r["name"]: r for r in res["layers"]}
    assert rows[row]["jump"] == jump, rows[row]
    if jump is not None:
        assert rows[row]["receptive_field"] == "global"


def _saved_by_graph(out, model) -> int:
    """Bytes of the tensors the autograd graph of `out` holds for backward, found by walking the graph's nodes and
    their `_saved_*` attributes (no hooks): each storage once, parameters and buffers excluded."""
    import torch

    own = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen, stack, storages = set(), [out.grad_fn], {}
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for attr in dir(node):
            if not attr.startswith("_saved_"):
                continue
            try:
                vals = getattr(node, attr)
            except RuntimeError:
                continue
            for v in vals if isinstance(vals, (list, tuple)) else [vals]:
                if isinstance(v, torch.Tensor) and v.untyped_storage().data_ptr() not in own:
                    storages[v.untyped_storage().data_ptr()] = v.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return sum(storages.values())


@pytest.mark.parametrize(
    "name,size,batch",
    [
        ("resnet18", 64, 4),
        ("mobilenet_v3_small", 96, 3),
        ("convnext_tiny", 64, 2),
        ("vit_b_32", 224, 2),
        ("lenet5", 32, 8),
    ],
)
def test_training_memory_is_what_autograd_saves(name, size, batch):
    """The figure (computed on the meta device) against a real training-mode forward on the CPU whose graph is
    walked for the tensors it saved."""
    import torch

    from cnncli.analysis.summary import saved_for_backward
    from cnncli.models import get_model as build

    model = build(name)
    res = summarize(model, (3, size, size), batch=batch, measure=False).as_json()
    model.train()
    x = torch.randn(batch, 3, size, size)
    out = model(x)
    by_graph = _saved_by_graph(out, model)
    assert res["memory"]["saved_for_backward"] == by_graph
    assert saved_for_backward(model, (3, size, size), batch, "cpu") == by_graph  # the same count on real tensors


UNTRACEABLE = """
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.conv1(x))
        if x.sum() > -1e9:  # data-dependent control flow: torch.fx cannot trace it, the meta device cannot run it
            x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))
"""


def test_untraceable_model_is_measured_and_says_so(tmp_path):
    (tmp_path / "net.py").write_text(UNTRACEABLE)
    out = json.loads(run_cnn("summary", f"{tmp_path / 'net.py'}:Net", "--in", "3x32x32", "--json", check=0).stdout)
    rows = {r["name"]: r for r in out["layers"]}
    assert (rows["conv1"]["receptive_field"], rows["conv1"]["receptive_field_kind"]) == ([3, 3], "measured")
    assert (rows["conv2"]["receptive_field"], rows["conv2"]["jump"]) == ([5, 5], [2, 2])
    assert rows["fc"]["receptive_field_kind"] == "at least"  # the mean reaches the border: the field may be larger
    assert out["macs"] == 32 * 32 * 8 * 27 + 16 * 16 * 8 * 72 + 80
    assert out["memory"]["saved_for_backward"] > 0  # counted on a real step (fake tensors cannot run .sum() > x)


def test_a_module_called_twice_has_the_field_of_each_call():
    """torchvision's BasicBlock runs one ReLU twice: after conv1 (field 19 in layer1.0) and after the sum (27). Each
    call is a row, and each row says its own call's field (not the last call's on both)."""
    p = run_cnn("summary", "tv:resnet18", "--json", "--depth", "3", check=0)
    relu = [r for r in json.loads(p.stdout)["layers"] if r["name"] == "layer1.0.relu"]
    assert [r["receptive_field"] for r in relu] == [[19, 19], [27, 27]]


def test_an_unknown_training_memory_says_why():
    """resnet18 at 32x32 ends on 1x1 maps: at batch 1 BatchNorm cannot train, so what a step keeps is unknown, and
    the line says why and what to give."""
    p = run_cnn("summary", "tv:resnet18", "--in", "3x32x32", check=0)
    assert "keeps unknown" not in p.stdout
    assert "BatchNorm layer sees one value per channel" in p.stdout and "--batch 2" in p.stdout
    memory = json.loads(run_cnn("summary", "tv:resnet18", "--in", "3x32x32", "--json", check=0).stdout)["memory"]
    assert memory["saved_for_backward"] is None and "batch 1" in memory["saved_for_backward_unknown"]
    batch2 = json.loads(run_cnn("summary", "tv:resnet18", "--in", "3x32x32", "--batch", "2", "--json", check=0).stdout)
    assert batch2["memory"]["saved_for_backward"] > 0 and "saved_for_backward_unknown" not in batch2["memory"]


LOOPING = """
import torch.nn as nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(x).relu()


class Net(nn.Module):
    # timm's fastvit/hrnet habits: a container never called itself, a child run by .forward()
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.stages = nn.Sequential(Block(8), Block(8))
        self.extra = nn.ModuleList([Block(8)])
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        for block in self.stages:
            x = block(x)
        x = self.extra[0].forward(x)
        return self.head(x.mean((2, 3)))
"""


def test_macs_rows_of_a_model_that_loops_over_its_containers(tmp_path):
    """Per-row MACs where a model runs a container's children itself (fastvit's stages, hrnet's ModuleLists):
    each operation is its innermost running module's; no row is negative and the rows add up."""
    (tmp_path / "net.py").write_text(LOOPING)
    for depth in ("1", "2", "3"):
        out = json.loads(
            run_cnn(
                "summary", f"{tmp_path / 'net.py'}:Net", "--in", "3x16x16", "--depth", depth, "--json", check=0
            ).stdout
        )
        rows = {r["name"]: r for r in out["layers"]}
        assert all(r["macs"] >= 0 for r in out["layers"] if r["macs"] is not None), out["layers"]
        assert sum(r["macs"] for r in out["layers"] if r["macs"] is not None) == out["macs"]
        conv = 8 * 8 * 9 * 16 * 16  # one Block's conv per image
        assert rows["stages"]["macs_total"] == 2 * conv
        # extra[0] ran through .forward() (no hook saw it), but its conv was called: that module ran it
        assert rows["extra"]["macs_total"] == conv
        assert out["macs"] == 3 * 8 * 9 * 16 * 16 + 3 * conv + 8 * 10
        if depth == "1":
            assert rows["Net"]["macs"] == 0  # the root runs no counted operation of its own


ZERO_INIT = """
import torch.nn as nn


class Net(nn.Module):
    # a residual branch closed at initialisation (zero_init_residual), in a model fx cannot trace
    def __init__(self, num_classes=2, in_channels=3):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, 8, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(8, 8, 9, padding=4), nn.BatchNorm2d(8))
        nn.init.zeros_(self.branch[1].weight)
        self.after = nn.Identity()
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.stem(x)
        if float(x.abs().sum()) >= 0:  # reads a value: no fx trace, the fields are measured
            x = x + self.branch(x)
        return self.head(self.after(x).mean((2, 3)))
"""


def test_a_measured_field_opens_zero_initialised_branches(tmp_path):
    (tmp_path / "net.py").write_text(ZERO_INIT)
    p = run_cnn("summary", f"{tmp_path / 'net.py'}:Net", "--in", "3x32x32", "--json", check=0)
    out = json.loads(p.stdout)
    rows = {r["name"]: r for r in out["layers"]}
    # the shortcut alone would read 3 (the stem); the architecture reads 3 + 8 through the 9x9 branch
    assert rows["after"]["receptive_field_kind"] == "measured" and rows["after"]["receptive_field"] == [11, 11]
    assert out["opened_scales"] == 1
    text = run_cnn("summary", f"{tmp_path / 'net.py'}:Net", "--in", "3x32x32", check=0).stdout
    assert "1 zero-initialised scale tensor(s) set to 1" in text
