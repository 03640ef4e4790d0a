"""`cnn summary` against published figures and against `cnn shape --layers`."""

import json

import pytest
from conftest import run_cnn

from cnncli import arith
from cnncli.models import get_model
from cnncli.summary import summarize


@pytest.mark.parametrize("name,params,gmacs", [("resnet18", 11_689_512, 1.81), ("resnet50", 25_557_032, 4.09),
                                               ("vgg16", 138_357_544, 15.47), ("mobilenet_v2", 3_504_872, 0.30)])
def test_published_figures(name, params, gmacs):
    res = summarize(get_model(name), (3, 224, 224))
    assert res["params"] == params
    assert round(res["macs"] / 1e9, 2) == gmacs
    assert res["output"] == [1000]


def test_resnet18_cli_json():
    p = run_cnn("summary", "resnet18", "--in", "3x224x224", "--json", check=0)
    out = json.loads(p.stdout)
    assert set(out) >= {"model", "input", "output", "params", "trainable_params", "macs", "layers"}
    assert out["params"] == 11_689_512 and round(out["macs"] / 1e9, 2) == 1.81
    assert out["receptive_field"] == [435 + 6 * 32] * 2  # 435 at layer4, then the pooled 7x7 map
    layer4 = next(r for r in out["layers"] if r["name"] == "layer4")
    assert layer4["receptive_field"] == [435, 435] and layer4["jump"] == [32, 32]


def test_lenet_summary_agrees_with_shape_layer_by_layer():
    spec = "conv(6,k=5) relu maxpool(2) conv(16,k=5) relu maxpool(2) flatten fc(120) relu fc(84) relu fc(10)"
    rows = arith.run_layers((3, 32, 32), spec)
    res = summarize(get_model("lenet5"), (3, 32, 32))
    leaves = [r for r in res["layers"] if r["type"] not in ("LeNet5", "Sequential")]
    assert len(leaves) == len(rows)
    for leaf, row in zip(leaves, rows):
        assert tuple(leaf["output"]) == tuple(row.output), row.name
        assert leaf["params"] == row.params, row.name
        assert leaf["macs"] == row.macs, row.name
        assert tuple(leaf["receptive_field"]) == row.receptive_field, row.name
        assert tuple(leaf["jump"]) == row.jump, row.name
    assert res["params"] == arith.totals(rows)["params"] and res["macs"] == arith.totals(rows)["macs"]


def test_summary_text_table():
    p = run_cnn("summary", "lenet", "--in", "1x32x32", check=0)
    assert "features.0" in p.stdout and "61,706" in p.stdout and "receptive field 32" in p.stdout
