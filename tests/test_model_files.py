"""#12: the model files people have, through every command.

torchvision models are saved in every form a training script writes (plain and wrapped state dicts with the
DDP/Lightning/compile prefixes, timm's EMA checkpoint with its argparse args, TorchScript, a torch.export program,
a whole pickled module), then exported with `cnn export` and run in ONNX Runtime against the original PyTorch
model; `cnn summary` and `cnn eval` run on the same files, eval's accuracy checked against the model run by hand.
"""

import argparse
import json
import os
import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import run_cnn
from fixtures import write_cifar10

MODELS = ("resnet18", "mobilenet_v2", "squeezenet1_1")
FORMS = ("plain", "tutorial_ddp", "lightning", "timm_ema", "compiled", "torchscript", "program", "pickle")
# The wrappers (DDP, Lightning, timm's EMA, torch.compile) only rename the keys: each is run on resnet18. Every
# architecture runs as a plain state dict; resnet18 and mobilenet_v2 (BatchNorm folding, depthwise convolutions)
# also in each form that carries its own code or pickled classes; squeezenet1_1 (no BatchNorm, concatenations) as a
# plain state dict, through the dynamo exporter.
WRAPPERS = ("tutorial_ddp", "lightning", "timm_ema", "compiled")
CASES = [(f, n) for n in MODELS for f in FORMS if n == "resnet18" or (f not in WRAPPERS and n != "squeezenet1_1")]
CASES += [("plain", "squeezenet1_1")]
SIZE = {"resnet18": 32, "mobilenet_v2": 96, "squeezenet1_1": 64}  # mobilenet >= 96 px: see test_ambiguous_layout
MARKER_CLASS = "tests_payload_marker"


def _original(name: str) -> torch.nn.Module:
    torch.manual_seed(sum(map(ord, name)))
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so folding them into the convs is really tested
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _save(model: torch.nn.Module, name: str, form: str, path: str) -> None:
    sd = model.state_dict()
    size = SIZE[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form == "plain":
            torch.save(sd, path)
        elif form == "tutorial_ddp":  # the PyTorch tutorials' dict, saved from a DDP-wrapped model
            torch.save(
                {
                    "epoch": 5,
                    "model_state_dict": {"module." + k: v for k, v in sd.items()},
                    "optimizer_state_dict": {"state": {}, "param_groups": []},
                    "loss": 0.3,
                },
                path,
            )
        elif form == "lightning":
            torch.save(
                {
                    "state_dict": {"model." + k: v for k, v in sd.items()},
                    "epoch": 3,
                    "global_step": 10,
                    "hyper_parameters": {"lr": 0.1},
                },
                path,
            )
        elif form == "timm_ema":  # timm's train.py: the EMA copy, argparse args next to it
            torch.save(
                {
                    "epoch": 9,
                    "arch": name,
                    "state_dict_ema": sd,
                    "args": argparse.Namespace(lr=0.1, arch=name),
                    "metric": np.float64(71.5),
                },
                path,
            )
        elif form == "compiled":
            torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}}, path)
        elif form == "torchscript":
            torch.jit.save(torch.jit.script(model), path)
        elif form == "program":
            batch = torch.export.Dim("batch", min=1, max=64)
            program = torch.export.export(model, (torch.randn(2, 3, size, size),), dynamic_shapes=({0: batch},))
            torch.export.save(program, path)
        elif form == "pickle":
            torch.save(model, path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelfiles")
    out = {}
    for name in MODELS:
        model = _original(name)
        for form in (f for f, n in CASES if n == name):
            path = str(root / f"{name}-{form}.{'pt2' if form == 'program' else 'pt'}")
            _save(model, name, form, path)
            out[name, form] = path
        out[name] = model
    write_cifar10(str(root / "data"), n_train=50, n_test=60)
    out["root"] = root
    return out


def _model_args(name: str, form: str) -> list[str]:
    # files that carry code run only with --trust-code (a pickle also takes its old name, --trust-pickle)
    extra = {"pickle": ["--trust-pickle"], "torchscript": ["--trust-code"], "program": ["--trust-code"]}.get(form, [])
    if form != "program":  # a program records its input size; the others are told
        extra += ["--in", f"3x{SIZE[name]}x{SIZE[name]}"]
    return extra


@pytest.mark.parametrize("form,name", CASES)
def test_export_any_form_matches_the_original_in_onnx_runtime(files, name, form):
    import onnxruntime as ort

    path = files[name, form]
    out = str(files["root"] / f"{name}-{form}.onnx")
    dynamo = form == "plain" and name == "squeezenet1_1"  # the default exporter once: it is the slow one
    exporter = [] if dynamo else ["--exporter", "torchscript"]
    p = run_cnn("export", path, "--onnx", "-o", out, "--force", "--json", *exporter, *_model_args(name, form), check=0)
    res = json.loads(p.stdout)
    assert res["max_abs_diff"] < 1e-4 and os.path.exists(out)
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, SIZE[name], SIZE[name], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ref = files[name](x)
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert got.shape == (3, 10)
    assert float(np.abs(got - ref.numpy()).max()) < 1e-3
    meta = {p.key: json.loads(p.value) for p in __import__("onnx").load(out).metadata_props}
    assert meta["source"]["file"] == path and meta["source"]["kind"] in (
        "state_dict",
        "torchscript",
        "program",
        "pickled module",
    )
    if form not in ("torchscript", "program"):  # detected (or rebuilt from the pickle) as torchvision's model
        assert meta["source"]["architecture"] == f"tv:{name}" and meta["mean"] == [0.485, 0.456, 0.406]


@pytest.mark.parametrize("form,name", CASES)
def test_summary_and_eval_on_the_same_files(files, name, form):
    path = files[name, form]
    p = run_cnn("summary", path, "--json", "--device", "cpu", *_model_args(name, form), check=0)
    s = json.loads(p.stdout)
    assert s["params"] == sum(t.numel() for t in files[name].parameters())
    assert s["output"] == [10]
    from cnncli.analysis.summary import module_macs

    _, macs = module_macs(files[name], (3, SIZE[name], SIZE[name]), "cpu")
    assert s["macs"] == macs  # TorchScript and programs too: counted from the aten operations a forward runs
    if form in ("torchscript", "program"):  # but nothing per layer: unknown, never 0
        assert all(r["macs"] is None and r["receptive_field"] is None for r in s["layers"])
    data = str(files["root"] / "data")
    told = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"] if form in ("torchscript", "program") else []
    p = run_cnn(
        "eval",
        path,
        "--data",
        "cifar10",
        "--data-dir",
        data,
        "--json",
        "--device",
        "cpu",
        *_model_args(name, form),
        *told,
        check=0,
    )  # TorchScript and programs do not say their normalization
    res = json.loads(p.stdout)
    assert res["samples"] == 60
    accuracy, loss = _by_hand(files[name], data, SIZE[name])
    assert res["loss"] == pytest.approx(loss, rel=1e-4)  # the same model on the same inputs
    assert abs(res["accuracy"] - accuracy) <= 3 / 60 + 1e-9  # (random weights: ties under ReLU may break either way)


def _by_hand(model, data: str, size: int) -> tuple[float, float]:
    """The model on the CIFAR test split, preprocessed as torchvision's weights say (ImageNet mean/std), resized the
    way cnn eval resizes a dataset to a model's input size."""
    import pickle

    with open(os.path.join(data, "cifar-10-batches-py", "test_batch"), "rb") as f:  # the fixture's own file
        batch = pickle.load(f)
    x = torch.from_numpy(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
    targets = torch.tensor(batch["labels"])
    if size != 32:
        x = torch.nn.functional.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False)
        x = x.round().clamp(0, 255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x.float() / 255 - mean) / std)
    loss = float(torch.nn.functional.cross_entropy(logits, targets))
    return float((logits.argmax(1) == targets).float().mean()), loss


def test_eval_of_an_onnx_file_written_elsewhere(files):
    """An ONNX file without cnncli's metadata: the input size comes from its graph, mean/std from the command line."""
    path = str(files["root"] / "plain-torch.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            files["resnet18"],
            (torch.randn(1, 3, 32, 32),),
            path,
            dynamo=False,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
        )
    data = str(files["root"] / "data")
    p = run_cnn(
        "eval",
        path,
        "--data",
        "cifar10",
        "--data-dir",
        data,
        "--json",
        "--mean",
        "0.485,0.456,0.406",
        "--std",
        "0.229,0.224,0.225",
        check=0,
    )
    res = json.loads(p.stdout)
    accuracy, loss = _by_hand(files["resnet18"], data, 32)
    assert res["loss"] == pytest.approx(loss, rel=1e-4) and res["samples"] == 60
    assert "assumed the dataset's class names" in p.stderr


def test_fcn_and_scoremap_of_a_state_dict_and_a_registry_name(files, tmp_path):
    """A state dict (Lightning wrapper) converted with cnn fcn: a checkpoint every command reads, with the
    architecture and the assumed preprocessing recorded; scoremap maps an image larger than the training size."""
    from PIL import Image

    out = tmp_path / "r-fcn.pt"
    p = run_cnn("fcn", files["resnet18", "lightning"], "--in", "3x32x32", "-o", out, "--json", check=0)
    assert json.loads(p.stdout)["max_abs_diff"] < 1e-4
    ck = torch.load(out, weights_only=True)
    assert ck["model"]["name"] == "tv:resnet18" and ck["normalization"]["mean"] == [0.485, 0.456, 0.406]
    Image.fromarray(np.zeros((96, 128, 3), np.uint8)).save(tmp_path / "big.png")
    p = run_cnn("scoremap", out, tmp_path / "big.png", "-o", tmp_path / "maps", "--json", check=0)
    assert json.loads(p.stdout)["scores_shape"][0] == 10
    p = run_cnn("fcn", "lenet5", "--weights", files["root"] / "nothere.pt")
    assert p.returncode == 2 and "not found" in p.stderr


def test_a_pickled_model_is_refused_without_trust_pickle(files):
    p = run_cnn("export", files["resnet18", "pickle"], "--onnx", "-o", str(files["root"] / "never.onnx"))
    assert p.returncode == 2 and p.stdout == ""
    assert "would run code" in p.stderr and "--trust-code" in p.stderr and "Traceback" not in p.stderr
    assert not os.path.exists(files["root"] / "never.onnx")


@pytest.mark.parametrize("form", ["torchscript", "program"])
@pytest.mark.parametrize("command", ["export", "summary", "eval", "predict", "inspect", "fcn", "scoremap", "weights"])
def test_files_that_carry_code_are_refused_without_trust_code(files, form, command, tmp_path):
    """TorchScript runs its own code at load and in forward; torch.export.load unpickles parts of a .pt2: every
    command refuses both without --trust-code, naming the flag, before anything is loaded or written."""
    from PIL import Image

    f = files["resnet18", form]
    img = tmp_path / "x.png"
    Image.new("RGB", (40, 40)).save(img)
    argv = {
        "export": ["export", f, "--onnx", "-o", tmp_path / "x.onnx"],
        "summary": ["summary", f],
        "eval": ["eval", f, "--data", "fake"],
        "predict": ["predict", f, img],
        "inspect": ["inspect", "kernels", f, "-o", tmp_path / "k"],
        "fcn": ["fcn", f, "-o", tmp_path / "f.pt"],
        "scoremap": ["scoremap", f, img, "-o", tmp_path / "s"],
        "weights": ["summary", "tv:resnet18", "--weights", f],
    }[command]
    p = run_cnn(*argv)
    assert p.returncode == 2 and p.stdout == "", p.stderr
    assert "refusing to load" in p.stderr and "--trust-code" in p.stderr and len(p.stderr.splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["x.png"]


def test_registry_name_exports(tmp_path):
    out = tmp_path / "r.onnx"
    p = run_cnn("export", "resnet20", "--onnx", "-o", out, "--exporter", "torchscript", "--json", check=0)
    assert json.loads(p.stdout)["max_abs_diff"] < 1e-4 and "random weights" in p.stderr


def test_the_weights_decide_the_layout(tmp_path):
    """A torchvision resnet18 state dict (7x7 stem) given as the built-in resnet18 and run at 32x32 keeps its stem
    (the built-in would switch to the CIFAR stem below 96 px)."""
    model = _original("resnet18")
    torch.save(model.state_dict(), tmp_path / "r.pt")
    from cnncli.models.open import ModelRequest, open_model

    opened = open_model(str(tmp_path / "r.pt"), ModelRequest(model="resnet18", input_size=(3, 32, 32)))
    assert opened.spec.build_size == (224, 224) and opened.model.conv1.kernel_size == (7, 7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(opened.model.eval()(x), model(x))


def test_ambiguous_layout_is_exit_2_naming_the_candidates(files, tmp_path):
    """torchvision's mobilenet_v2 and the built-in one (stride-1 stem below 96 px) have identical tensors but
    compute different things at 32x32: the tool does not guess."""
    path = files["mobilenet_v2", "plain"]
    p = run_cnn("summary", path, "--in", "3x32x32")
    assert p.returncode == 2 and "tv:mobilenet_v2" in p.stderr and "--model" in p.stderr
    # and says how they differ: the strides the tensors cannot show
    assert "where they differ: tv:mobilenet_v2 has 2 more Conv2d stride 2" in p.stderr, p.stderr
    p = run_cnn("summary", path, "--in", "3x32x32", "--model", "tv:mobilenet_v2", "--json", check=0)
    assert json.loads(p.stdout)["output"] == [10]


def test_unknown_state_dict_names_the_nearest_candidates(tmp_path):
    sd = _original("resnet18").state_dict()
    sd["extra.weight"] = torch.zeros(3)
    del sd["layer4.1.bn2.bias"]
    torch.save(sd, tmp_path / "odd.pt")
    p = run_cnn("export", tmp_path / "odd.pt", "--onnx")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "matches no known architecture" in p.stderr and "resnet18" in p.stderr and "extra.weight" in p.stderr
    assert not os.path.exists(tmp_path / "odd.onnx")


def test_train_weights_remakes_the_head_and_loads_the_rest(tmp_path):
    """Fine-tuning: a 7-class lenet5 state dict (tutorial wrapper, DDP prefix) starts a 10-class run. With a
    vanishing learning rate the trained backbone is the file's, and the head has the new size."""
    from cnncli.models import get_model

    torch.manual_seed(3)
    src = get_model("lenet5", num_classes=7, in_channels=3, image_size=(32, 32)).state_dict()
    torch.save({"model_state_dict": {"module." + k: v for k, v in src.items()}, "epoch": 1}, tmp_path / "w.pt")
    data = write_cifar10(str(tmp_path / "data"), n_train=100, n_test=20)
    p = run_cnn(
        "train",
        "lenet5",
        "--data",
        "cifar10",
        "--data-dir",
        data,
        "--weights",
        tmp_path / "w.pt",
        "--epochs",
        "1",
        "--batch-size",
        "50",
        "--lr",
        "1e-30",
        "--weight-decay",
        "0",
        "--project",
        tmp_path / "runs",
        "--precision",
        "32",
        "--device",
        "cpu",
        check=0,
    )
    assert "loaded 8 tensors, re-made 2 (classifier.5.weight, classifier.5.bias)" in p.stderr
    best = torch.load(tmp_path / "runs" / "train" / "best.pt", weights_only=True)["state_dict"]
    for k, v in src.items():
        if k.startswith("classifier.5."):
            assert best[k].shape[0] == 10 and v.shape[0] == 7
        else:
            torch.testing.assert_close(best[k], v, rtol=0, atol=1e-6)
    assert json.load(open(tmp_path / "runs" / "train" / "args.json"))["weights"] == str(tmp_path / "w.pt")


def test_train_weights_keep_their_layout(tmp_path):
    """A torchvision resnet18 state dict (7x7 stem, 1000 classes) fine-tuned as the built-in resnet18 on 32x32
    images: the stem the weights have is kept (built for 224 px), only the head is re-made, and the checkpoint
    records the layout so every later command rebuilds it."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "tv.pt")
    data = write_cifar10(str(tmp_path / "data"), n_train=100, n_test=20)
    p = run_cnn(
        "train",
        "resnet18",
        "--data",
        "cifar10",
        "--data-dir",
        data,
        "--weights",
        tmp_path / "tv.pt",
        "--epochs",
        "1",
        "--max-steps",
        "1",
        "--batch-size",
        "50",
        "--project",
        tmp_path / "runs",
        "--device",
        "cpu",
        check=0,
    )
    assert "layout built for 224x224" in p.stderr and "loaded 120 tensors, re-made 2 (fc.weight, fc.bias)" in p.stderr
    ck = torch.load(tmp_path / "runs" / "train" / "best.pt", weights_only=True)
    assert ck["model"]["build_size"] == [224, 224] and ck["state_dict"]["conv1.weight"].shape[-1] == 7
    out = json.loads(run_cnn("summary", tmp_path / "runs" / "train" / "best.pt", "--json", check=0).stdout)
    assert out["input"] == [3, 32, 32] and out["layers"][1]["output"] == [64, 16, 16]  # the 7x7 stride-2 stem


def test_train_weights_adapts_the_input_conv(tmp_path):
    from cnncli.models import get_model
    from cnncli.models.transfer import transfer_weights

    src = get_model("lenet5", num_classes=10, in_channels=3, image_size=(32, 32)).state_dict()
    gray = get_model("lenet5", num_classes=10, in_channels=1, image_size=(32, 32))
    done = transfer_weights(gray, src)
    assert done.adapted == ["features.0.weight: 3 -> 1 channels"] and not done.remade
    torch.testing.assert_close(gray.state_dict()["features.0.weight"], src["features.0.weight"].sum(1, keepdim=True))


def test_detection_on_every_torchvision_classification_model():
    """Every torchvision classification model, built on the meta device (no memory, no weights): its state dict's
    names and shapes detect that model; every eighth is built with 7 classes and 1 input channel, which must be
    read off the shapes."""
    import torchvision.models as tvm

    from cnncli.models.detect import build_on_meta, find_fits

    wrong = []
    for i, name in enumerate(tvm.list_models(module=tvm)):
        nc, c = (7, 1) if i % 8 == 0 else (1000, 3)
        state = build_on_meta("tv:" + name, nc, c, (224, 224)).state_dict()
        fits, _ = find_fits(state)
        if not any(f.name == "tv:" + name and (f.num_classes, f.in_channels) == (nc, c) for f in fits):
            wrong.append((name, [(f.name, f.num_classes, f.in_channels) for f in fits]))
    assert not wrong


# ----------------------------------------------------------------------------------------------- hostile files


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _zip_with(path, members: dict) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("container", ["wrapped", "torchscript", "program", "weights", "train_weights"])
def test_a_payload_in_any_container_is_exit_2_and_never_runs(tmp_path, container):
    import pickle

    marker = tmp_path / "PWNED"
    payload = pickle.dumps({"state_dict": {"w": _Payload(marker)}}, protocol=2)
    path = tmp_path / "evil.pt"
    if container in ("wrapped", "weights", "train_weights"):
        torch.save({"model_state_dict": {"w": torch.zeros(1)}, "x": _Payload(marker)}, path)
    elif container == "torchscript":  # a zip laid out like a TorchScript archive
        _zip_with(path, {"evil/data.pkl": payload, "evil/constants.pkl": payload, "evil/code/__torch__/m.py": "x"})
    else:  # laid out like a torch.export archive
        path = tmp_path / "evil.pt2"
        _zip_with(path, {"evil/archive_format": "pt2", "evil/models/model.json": "{}", "evil/data/weights/w": payload})
    before = sorted(os.listdir(tmp_path))
    if container == "weights":
        args = ["summary", "lenet5", "--weights", path]
    elif container == "train_weights":
        args = ["train", "lenet5", "--data", "fake", "--weights", path, "--project", tmp_path / "runs"]
    else:
        args = ["export", path, "--onnx"]
    p = run_cnn(*args)
    assert p.returncode == 2 and p.stdout == "" and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and p.stderr.startswith("error: ")
    assert not marker.exists() and sorted(os.listdir(tmp_path)) == before


def test_trust_pickle_names_a_class_that_cannot_be_imported(tmp_path):
    import sys
    import types

    mod = types.ModuleType(MARKER_CLASS)
    exec("import torch\nclass Net(torch.nn.Linear):\n    pass\n", mod.__dict__)
    sys.modules[MARKER_CLASS] = mod
    try:
        torch.save(mod.Net(2, 2), tmp_path / "net.pt")
    finally:
        del sys.modules[MARKER_CLASS]
    p = run_cnn("summary", tmp_path / "net.pt", "--trust-pickle")
    assert p.returncode == 2 and "cannot be imported" in p.stderr and MARKER_CLASS in p.stderr


TRAINING_SCRIPT = """
import os

import torch
import torch.nn as nn


class Net(nn.Module):  # takes no arguments: one network, 1 channel in, 10 classes out
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


print("training...")  # a training script's top level: no __main__ guard
with open(os.path.join(os.path.dirname(__file__), "runs.txt"), "a") as f:
    f.write("ran\\n")
model = Net()
for step in range(2):
    model(torch.randn(4, 1, 8, 8)).sum().backward()
torch.save(model.state_dict(), os.path.join(os.path.dirname(__file__), "again.pt"))
torch.save(model, os.path.join(os.path.dirname(__file__), "whole.pt"))
"""


def test_a_class_inside_a_training_script(tmp_path):
    """`--model train.py:Net` where train.py also trains at its top level: imported once (said, with the lines),
    as Python runs it (never on the meta device, where its torch.save would write empty tensors), its prints kept
    off stdout, and a class that takes no arguments fits by the network it builds (1 channel, 10 classes)."""
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)  # as the user trained it
    (tmp_path / "again.pt").rename(tmp_path / "net.pt")
    (tmp_path / "runs.txt").unlink()
    p = run_cnn("eval", tmp_path / "net.pt", "--model", f"{script}:Net", "--data", "digits", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["samples"] > 0  # stdout is the result alone
    assert "training..." in p.stderr and "runs its top-level code (line" in p.stderr
    assert (tmp_path / "runs.txt").read_text() == "ran\n"  # once
    rewritten = torch.load(tmp_path / "again.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in rewritten.values())  # not meta tensors over the user's file


def test_a_module_pickled_from_a_script_gets_a_hint_that_works(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "train.py"
    script.write_text(TRAINING_SCRIPT)
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True)  # whole.pt holds __main__.Net
    for extra in ([], ["--trust-code"]):
        p = run_cnn("summary", tmp_path / "whole.pt", *extra)
        assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "pickled from a script's __main__ (Net)" in p.stderr and "--model your_script.py:Net" in p.stderr


def test_architectures_with_the_same_tensors_are_told_apart_in_words():
    """timm's resnet50d and resnetaa50d have identical tensors; the anti-aliased one strides with average pools
    where the other strides its convolutions and max-pools (#29: the refusal says how they differ)."""
    timm = pytest.importorskip("timm")
    from cnncli.models.detect import how_they_differ

    with torch.device("meta"):
        a, b = timm.create_model("resnet50d"), timm.create_model("resnetaa50d")
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    said = how_they_differ([("resnet50d", a), ("resnetaa50d", b)])
    assert "resnet50d has 3 more Conv2d stride 2" in said and "resnetaa50d has 4 more AvgPool2d stride 2" in said
    assert how_they_differ([("resnet50d", a), ("again", a)]).startswith("their layers are the same kinds")
