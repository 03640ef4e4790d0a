"""`cnn predict`: folders, globs and files; table, JSON and CSV; a checkpoint and its ONNX export agree."""

import csv
import json
import os

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, run_cnn


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    """Images of several sizes and formats in nested folders, a checkpoint (10 classes) and its ONNX export."""
    from PIL import Image

    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    paths = []
    for sub, ext, size in (("a", "png", (40, 48)), ("a/deeper", "jpg", (32, 32)), ("b", "png", (64, 20))):
        (root / "imgs" / sub).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            p = root / "imgs" / sub / f"{i}.{ext}"
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(p)
            paths.append(str(p))
    (root / "imgs" / "notes.txt").write_text("not an image")
    ck = make_checkpoint(root / "m.pt", "smallcnn")
    run_cnn("export", ck, "--onnx", check=0)
    return {"root": root, "paths": sorted(paths), "ck": ck, "onnx": str(root / "m.onnx")}


def _json(*args):
    return json.loads(run_cnn("predict", *map(str, args), "--json", "--device", "cpu", check=0).stdout)


def test_folder_recursively_in_json(shots):
    res = _json(shots["ck"], shots["root"] / "imgs", "--topk", "3")
    assert sorted(p["image"] for p in res["predictions"]) == shots["paths"]  # the .txt is not an image
    for p in res["predictions"]:
        probs = [t["prob"] for t in p["topk"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] == f"c{t['index']}" for t in p["topk"])


def test_probabilities_are_the_model_on_the_resized_image(shots):
    """One image by hand: resized to the model's 32x32 with torchvision's Resize, normalized as the checkpoint says."""
    import torchvision.transforms as T
    from PIL import Image

    from cnncli.models.open import open_model

    path = shots["paths"][-1]
    res = _json(shots["ck"], path, "--topk", "10")
    opened = open_model(shots["ck"])
    with Image.open(path) as im:
        x = T.PILToTensor()(T.Resize((32, 32))(im.convert("RGB")))
    with torch.no_grad():
        probs = torch.softmax(opened.model.eval()(opened.preprocess.normalize(x[None])), 1)[0]
    got = {t["index"]: t["prob"] for t in res["predictions"][0]["topk"]}
    assert max(abs(got[i] - float(probs[i])) for i in range(10)) < 1e-5


def test_glob_and_files_and_topk_capped(shots, tmp_path):
    res = _json(shots["ck"], str(shots["root"] / "imgs" / "**" / "*.jpg"), shots["paths"][0], "--topk", "50")
    images = [p["image"] for p in res["predictions"]]
    assert len(images) == 5 and images[-1] == shots["paths"][0]
    assert all(len(p["topk"]) == 10 for p in res["predictions"])  # capped at the number of classes


def test_checkpoint_and_its_onnx_export_agree(shots, tmp_path):
    out = tmp_path / "p.csv"
    a = _json(shots["ck"], shots["root"] / "imgs")
    run_cnn("predict", shots["onnx"], shots["root"] / "imgs", "--csv", out, check=0)
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r["image"] for r in rows] == [p["image"] for p in a["predictions"]]
    assert [r["class1"] for r in rows] == [p["topk"][0]["class"] for p in a["predictions"]]
    assert all(abs(float(r["prob1"]) - p["topk"][0]["prob"]) < 1e-4 for r, p in zip(rows, a["predictions"]))


def test_table_on_stdout(shots):
    p = run_cnn("predict", shots["ck"], shots["paths"][0], "--topk", "2", check=0)
    line = next(ln for ln in p.stdout.splitlines() if shots["paths"][0] in ln)
    assert line.split()[1].startswith("c") and "img/s" in p.stdout


def test_many_images_go_through_workers(shots, tmp_path):
    """More images than two batches: decoded in DataLoader workers; order and results as without them."""
    from cnncli.engine.predict import predict

    a = predict(shots["ck"], [str(shots["root"] / "imgs")], batch_size=2, workers=0)
    b = predict(shots["ck"], [str(shots["root"] / "imgs")], batch_size=2, workers=2)
    assert [(p.image, p.topk[0]["index"]) for p in a.predictions] == [
        (p.image, p.topk[0]["index"]) for p in b.predictions
    ]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["{root}/nothing"], "image not found"),
        (["{root}/imgs/notes.txt"], "cannot read image"),
        (["{root}/empty"], "no images in"),
        (["{root}/*.gif"], "no images match"),
        (["{root}/imgs", "--topk", "0"], "--topk"),
        (["{root}/imgs", "--csv", "{root}/m.pt"], "is the input file"),
    ],
)
def test_bad_input(shots, args, needle):
    root = shots["root"]
    (root / "empty").mkdir(exist_ok=True)
    before = sorted(os.listdir(root))
    p = run_cnn("predict", shots["ck"], *[a.replace("{root}", str(root)) for a in args])
    assert p.returncode == 2 and p.stdout == "" and len(p.stderr.strip().splitlines()) == 1
    assert needle in p.stderr and sorted(os.listdir(root)) == before


def test_one_image_reaches_the_model_as_one_tensor_in_every_command(tmp_path):
    """eval, predict, inspect and scoremap decode, resize and normalise an image the same way: the tensor the first
    convolution receives is the same in all four (a camera-sized image resized to the model's input, and a scene at
    the input size that scoremap takes whole)."""
    import numpy as np
    import torch
    from conftest import make_checkpoint
    from PIL import Image

    ckpt = make_checkpoint(tmp_path / "m.pt", "smallcnn", size=(3, 32, 32))
    rng = np.random.default_rng(0)
    for c in ("c0", "c1"):  # eval's folder: the image under test is the last one it reads
        (tmp_path / "data" / c).mkdir(parents=True)
    big, small = tmp_path / "data" / "c1" / "big.png", tmp_path / "small.png"
    Image.fromarray(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)).save(big)
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "data" / "c0" / "a.png")
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(small)
    seen: list = []

    def first_conv(module, args):
        if isinstance(module, torch.nn.Conv2d) and module.in_channels == 3:
            seen.append(args[0].detach().float().cpu().contiguous())

    def fed(*argv):
        seen.clear()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(first_conv)
        try:
            run_cnn(*argv, "--device", "cpu", check=0)
        finally:
            handle.remove()
        assert seen, argv
        return seen[-1][-1:]  # the last image of the last batch

    out = str(tmp_path / "out")
    for image in (big, small):
        by = {"predict": fed("predict", ckpt, image), "inspect": fed("inspect", "features", ckpt, image, "-o", out)}
        if image == big:
            by["eval"] = fed("eval", ckpt, "--data", f"folder:{tmp_path / 'data'}")
        else:
            by["scoremap"] = fed("scoremap", ckpt, image, "-o", out)
        first = by["predict"]
        assert first.shape == (1, 3, 32, 32)
        for name, x in by.items():
            assert torch.equal(x, first), (image.name, name, (x - first).abs().max())
