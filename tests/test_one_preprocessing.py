"""#28: a model file is prepared alike by every command, whatever form it comes in.

The accuracy `cnn eval --min-accuracy` gates must be the accuracy of what `cnn predict` and the exported file
compute: each file below carries no preprocessing of its own (a state dict, as MODEL and through `--weights`, a
TorchScript archive, a torch.export program exported at batch 1), so one rule decides it when the model is opened,
and the dataset eval runs on never changes it.
"""

import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_cnn
from PIL import Image

SIDE = 64  # the program's input size (it records it); the others are told nothing


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("onerule")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=2).eval()
    with torch.no_grad():  # a net whose outputs depend on the normalization: non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.3, 0.3)
    torch.save(model.state_dict(), root / "sd.pt")
    torch.jit.save(torch.jit.script(model), root / "ts.pt")
    program = torch.export.export(model, (torch.randn(1, 3, SIDE, SIDE),))  # the usual call: batch 1 only
    torch.export.save(program, root / "p.pt2")
    rng = np.random.default_rng(1)
    images = []
    for c in ("c0", "c1"):
        (root / "data" / c).mkdir(parents=True)
        for i in range(3):
            path = root / "data" / c / f"{i}.png"
            Image.fromarray(rng.integers(0, 256, (50 + 7 * i, 70, 3), dtype=np.uint8)).save(path)
            images.append(str(path))
    return {"root": root, "model": model, "images": sorted(images)}


FORMS = {
    "state dict": ("sd.pt",),
    "--weights": ("resnet18", "--weights", "sd.pt"),
    "TorchScript": ("ts.pt", "--trust-code"),
    "program at batch 1": ("p.pt2", "--trust-code"),
}


def _model(files, form):
    return [str(files["root"] / a) if a.endswith((".pt", ".pt2")) else a for a in FORMS[form]]


def _predicted(p) -> dict:
    assert p.returncode == 0, p.stderr
    return {r["image"]: (r["topk"][0]["index"], r["topk"][0]["prob"]) for r in json.loads(p.stdout)["predictions"]}


@pytest.mark.parametrize("form", [f for f in FORMS if f != "--weights"])  # (--weights: the test below)
def test_eval_predict_and_the_exported_file_predict_the_same(files, form):
    root, images = files["root"], files["images"]
    model, *opts = _model(files, form)
    predicted = _predicted(run_cnn("predict", model, *images, *opts, "--topk", "1", "--json", "--device", "cpu"))
    # eval on a folder of the same images: its confusion matrix is the one predict's answers make
    p = run_cnn("eval", model, *opts, "--data", f"folder:{root / 'data'}", "--json", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    confusion = [[0, 0], [0, 0]]
    for image, (index, _) in predicted.items():
        confusion[int("/c1/" in image)][index] += 1
    assert json.loads(p.stdout)["confusion"] == confusion
    # the exported file, in ONNX Runtime, with the preprocessing written into it
    onnx = root / f"{form.replace(' ', '_').strip('-')}.onnx"
    run_cnn("export", model, *opts, "--onnx", "-o", onnx, "--force", "--exporter", "torchscript", check=0)
    exported = _predicted(run_cnn("predict", onnx, *images, "--topk", "1", "--json"))
    assert [v[0] for v in exported.values()] == [v[0] for v in predicted.values()]
    assert np.allclose([v[1] for v in exported.values()], [v[1] for v in predicted.values()], atol=1e-4)


def test_a_state_dict_is_prepared_alike_as_model_and_through_weights(files):
    """The same weights, the same assumption: resnet18 at ImageNet size is torchvision's layout, whose weights'
    normalization both ways assume (and say)."""
    images = files["images"]
    a = run_cnn("predict", *_model(files, "state dict"), *images, "--json")
    b = run_cnn("predict", *_model(files, "--weights"), *images, "--json")
    assert _predicted(a) == _predicted(b)
    for p in (a, b):
        assert "assumed resnet18's normalization" in p.stderr, p.stderr


def test_the_dataset_never_changes_how_a_file_is_prepared(files, tmp_path):
    """eval on 32x32 data runs a TorchScript file at the size every other command runs it (assumed and said), not
    at the data's size: the accuracy is that of the pipeline that is deployed."""
    rng = np.random.default_rng(2)
    for c in ("c0", "c1"):
        (tmp_path / c).mkdir()
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.png")
    p = run_cnn("eval", *_model(files, "TorchScript"), "--data", f"folder:{tmp_path}", "--json", "--device", "cpu")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["input"] == [3, 224, 224]
    assert "input 3x224x224 assumed (give --in)" in p.stderr and "assumed no normalization" in p.stderr


def test_a_program_exported_at_batch_1_runs_any_batch_at_its_own_size(files):
    """torch.export programs fixed to batch 1 run in eval and predict one image at a time (said), at the size the
    program was exported for, with the same outputs as the model they came from."""
    images = files["images"]
    p = run_cnn("predict", *_model(files, "program at batch 1"), *images, "--json", "--batch-size", "4")
    got = _predicted(p)
    assert len(got) == len(images) and "exported for batch 1 only" in p.stderr
    assert f"input 3x{SIDE}x{SIDE}" in p.stderr
    from cnncli.models.files import ProgramModule

    program = ProgramModule(torch.export.load(files["root"] / "p.pt2").module(), [1, 3, SIDE, SIDE])
    x = torch.randn(5, 3, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(program(x), files["model"](x), rtol=1e-4, atol=1e-4)


def test_a_torchscript_file_that_fails_at_the_assumed_size_says_to_give_in(tmp_path):
    class Flat(torch.nn.Module):  # a Linear over the flattened image: one input size only
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)
            self.fc = torch.nn.Linear(4 * 30 * 30, 2)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    path = tmp_path / "flat.pt"
    torch.jit.save(torch.jit.script(Flat()), path)
    p = run_cnn("summary", path, "--trust-code")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "assumed because the file does not record one" in p.stderr and "give --in" in p.stderr
    assert run_cnn("summary", path, "--trust-code", "--in", "3x32x32").returncode == 0


def test_timm_models_get_timms_own_normalisation():
    """timm's pretrained configs, as torchvision's weights are read: vit_tiny (augreg) and inception_v3 use
    0.5/0.5, resnet18 ImageNet's; inception_v3 is built for 299x299 (#29 point 2). timm comes with [dev]."""
    from cnncli.checkpoint import ModelSpec
    from cnncli.models import resolve
    from cnncli.models.open import ModelRequest, resolve_preprocess

    for name, mean, size in (
        ("timm:vit_tiny_patch16_224", (0.5, 0.5, 0.5), (3, 224, 224)),
        ("timm:inception_v3", (0.5, 0.5, 0.5), (3, 299, 299)),
        ("timm:resnet18", (0.485, 0.456, 0.406), (3, 224, 224)),
    ):
        assert resolve(name).input_size == size
        pre, notes = resolve_preprocess(ModelSpec(name, 1000, 3, size[1:]), ModelRequest(), {})
        assert pre.mean == pytest.approx(mean) and any(name.split(":")[1] + "'s normalization" in n for n in notes)
