"""Hostile and careless invocations of every command, through the real `cnn` entry point.

Each case asserts the promise of ../shared/CLI.md for bad input: exit 2, one `error:` line on stderr, no traceback,
nothing on stdout, no file in the shared workspace added, changed or removed, and no payload run (the pickled
and Python payloads would create a marker file). Fixtures are tiny and made once for the module.
"""

import hashlib
import os

import pytest
import torch
from conftest import make_checkpoint, run_cnn

BIG = "9" * 5000


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The workspace every case runs against: checkpoints, an ONNX file, images, folders, payloads."""
    from PIL import Image

    w = tmp_path_factory.mktemp("hostile")
    marker = w / "PWNED"
    ck = make_checkpoint(w / "m.pt", "lenet5")
    make_checkpoint(w / "gray.pt", "linenet", (1, 32, 32), 2, dataset="lines")
    torch.save({"model": {"name": "lenet5"}, "state_dict": {}, "x": _Payload(marker)}, w / "evil.pt")
    torch.save(torch.nn.Linear(2, 2), w / "whole.pt")
    torch.save([1, 2, 3], w / "list.pt")
    (w / "text.pt").write_text("not a checkpoint")
    (w / "empty.pt").write_bytes(b"")
    d = torch.load(ck, weights_only=True)
    d["state_dict"] = {k: v[:1] for k, v in d["state_dict"].items()}
    torch.save(d, w / "wrongshapes.pt")
    Image.fromarray(torch.zeros(64, 64, 3, dtype=torch.uint8).numpy()).save(w / "img.png")
    Image.fromarray(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()).save(w / "tiny.png")
    (w / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (w / "afile").write_text("a file where a folder is due")
    (w / "net.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Net: pass\n")
    (w / "syntax.py").write_text("def (:\n")
    (w / "plain.py").write_text("class Net:\n    pass\n")
    (w / "emptydir").mkdir()
    (w / "stringy.py").write_text(
        "import torch.nn as nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return 'logits'\n"
    )
    (w / "wrongout.py").write_text(
        "import torch.nn as nn\nclass Net(nn.Module):\n    def forward(self, x):\n        return x\n"
    )
    for cls in ("a", "b"):  # 900 M pixels each: decompression bombs by their headers
        (w / "bomb" / cls).mkdir(parents=True)
        (w / "bomb" / cls / "huge.png").write_bytes(_png_header(30000, 30000))
    (w / "one" / "a").mkdir(parents=True)
    Image.fromarray(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()).save(w / "one" / "a" / "x.png")
    mnist = w / "badmnist" / "MNIST" / "raw"
    mnist.mkdir(parents=True)
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (mnist / f).write_bytes(b"\x00\x00\x08\x03garbage")
    from cnncli.models import get_model

    lenet = get_model("lenet5", num_classes=10, in_channels=3, image_size=(32, 32)).eval()
    torch.save({"state_dict": lenet.state_dict()}, w / "sd.pt")
    torch.jit.save(torch.jit.script(lenet), w / "ts.pt")
    (w / "noclasses").mkdir()
    (w / "noclasses" / "readme.txt").write_text("no images here")
    return w


def _png_header(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def _snapshot(w):
    return {
        p.relative_to(w).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(w.rglob("*"))
        if p.is_file()
    }


M, G, E = "{w}/m.pt", "{w}/gray.pt", "{w}/evil.pt"

CASES = [
    # ------------------------------------------------------------------------------------------------- shape
    ("shape --in axb", "malformed size"),
    ("shape --in 0x32x32", "at least 1"),
    ("shape --in 3x-1x4", "malformed"),
    ("shape --in 3x32x32x4", "malformed"),
    ("shape --in", "requires an argument"),
    (f"shape --in 3x{BIG}x3", "too large"),
    ("shape --in 3x32x32 --k 0", "at least 1"),
    ("shape --in 3x32x32 --k x", "malformed kernel"),
    (f"shape --in 3x32x32 --k {BIG}", "too large"),
    ("shape --in 3x32x32 --s 0", "at least 1"),
    ("shape --in 3x32x32 --p -1", "at least 0"),
    ("shape --in 3x32x32 --p middle", "malformed padding"),
    ("shape --in 3x32x32 --d 0", "at least 1"),
    ("shape --in 3x8x8 --k 9", "larger than the padded input"),
    ("shape --in 3x32x32 --groups 2 --out-channels 4", "groups"),
    ("shape --in 3x32x32 --op bogus", "unknown --op"),
    ("shape --in 3x32x32 --out-channels abc", "not a valid integer"),
    ("shape --no-such-option", "No such option"),
    ("shape --in 3x32x32 --layers ''", "no layers"),
    ("shape --in 3x32x32 --layers wobble", "unknown layer"),
    ("shape --in 3x32x32 --layers conv(6,k=5,stirde=2)", "unknown keyword 'stirde'"),
    ("shape --in 3x32x32 --layers maxpool(2,ceil=banana)", "not true or false"),
    ("shape --in 3x32x32 --layers conv(x)", "must be an integer"),
    ("shape --in 3x32x32 --layers conv()", "missing"),
    ("shape --in 3x32x32 --layers conv(1,2,3,4,5,6,7,8)", "too many arguments"),
    ("shape --in 3x32x32 --layers fc(10,k=3)", "unknown keyword 'k'"),
    (f"shape --in 3x32x32 --layers conv({BIG})", "too large"),
    ("shape --in 3x4x4 --layers conv(6,k=5)", "layer 1"),
    ("shape --in 32x32 --layers conv(6)", "give channels too"),
    ("shape --in 3x32x32 --layers conv(6,k=5)relu)", "cannot read layer"),
    # ------------------------------------------------------------------------------------------------ models
    ("models --source nope", "unknown source"),
    ("models res* extra", "Got unexpected extra argument"),
    # ----------------------------------------------------------------------------------------------- summary
    ("summary resnett", "unknown model"),
    ("summary lenet5 --in axb", "malformed size"),
    ("summary lenet5 --device meta", "unknown device"),
    ("summary lenet5 --device tpu", "unknown device"),
    ("summary lenet5 --device cuda:7", "CUDA"),
    ("summary lenet5 --depth x", "not a valid integer"),
    ("summary {w}/nothere.pt", "not found"),
    (f"summary {E}", "refusing to load"),
    ("summary {w}/whole.pt", "refusing to load"),
    ("summary {w}/list.pt", "holds no model weights"),
    ("summary {w}/text.pt", "not a PyTorch file"),
    ("summary {w}/empty.pt", "unreadable model file"),
    ("summary {w}/wrongshapes.pt", "do not fit"),
    ("summary {w}/plain.py:Net --in 3x8x8", "not a torch.nn.Module"),
    ("summary {w}/syntax.py:Net", "cannot import"),
    ("summary {w}/nothere.py:Net", "model file not found"),
    ("summary {w}/m.pt --model {w}/net.py:Net", "not {w}/net.py:Net"),
    ("summary lenet5 --weights {w}/nothere.pt", "not found"),
    ("summary lenet5 --weights {w}/evil.pt", "refusing to load"),
    ("summary lenet5 --weights {w}/gray.pt", "does not fit"),
    (f"summary lenet5 --in 3x{BIG}x3", "too large"),
    ("summary lenet5 --in 3x4x4", "larger than the padded input"),
    ("summary lenet5 --in 3x200000x200000", "too large"),
    ("summary tv:resnet999", "unknown model"),
    ("summary timm:whatever", "unknown model"),
    # ------------------------------------------------------------------------------------------------- train
    ("train resnett --data lines", "unknown model"),
    ("train lenet --data cifar11", "unknown dataset"),
    ("train lenet", "give a MODEL and --data"),
    ("train --data lines", "give a MODEL and --data"),
    ("train lenet --data folder:", "image folder not found"),
    ("train lenet --data folder", "needs a path"),
    ("train lenet --data folder:{w}/nowhere", "image folder not found"),
    ("train lenet --data folder:{w}/emptydir", "cannot read images"),
    ("train lenet --data folder:{w}/noclasses", "cannot read images"),
    ("train lenet --data lines:x", "unknown dataset"),
    ("train lenet --data digits --optimizer adam", "unknown optimizer"),
    ("train lenet --data digits --schedule step", "unknown schedule"),
    ("train lenet --data digits --precision 8", "unknown precision"),
    ("train lenet --data digits --precision 16 --device cpu", "fp16 training is for GPUs"),
    ("train lenet --data digits --epochs 0", "--epochs"),
    ("train lenet --data digits --epochs -3", "--epochs"),
    ("train lenet --data digits --epochs x", "not a valid integer"),
    ("train lenet --data digits --batch-size 0", "--batch-size"),
    ("train lenet --data digits --batch-size 100000", "larger than the training set"),
    ("train lenet --data digits --lr 0", "--lr"),
    ("train lenet --data digits --lr -0.1", "--lr"),
    ("train lenet --data digits --lr nan", "--lr"),
    ("train lenet --data digits --lr inf", "--lr"),
    ("train lenet --data digits --weight-decay -1", "--weight-decay"),
    ("train lenet --data digits --weight-decay nan", "--weight-decay"),
    ("train lenet --data digits --label-smoothing 2", "--label-smoothing"),
    ("train lenet --data digits --label-smoothing nan", "--label-smoothing"),
    ("train lenet --data digits --label-smoothing -0.1", "--label-smoothing"),
    ("train lenet --data digits --seed 1e23", "not a valid integer"),
    ("train lenet --data digits --workers -1", "--workers"),
    ("train lenet --data digits --patience -1", "--patience"),
    ("train lenet --data digits --max-steps 0", "--max-steps"),
    ("train lenet --data digits --num-classes -3", "--num-classes"),
    ("train lenet --data digits --num-classes 0", "--num-classes"),
    ("train lenet --data digits --nproc-per-node 0", "--nproc-per-node"),
    ("train lenet --data digits --img-size axb", "malformed size"),
    ("train lenet --data digits --img-size 0", "at least 1"),
    ("train lenet --data digits --name ../../escaped", "--name must be a folder name"),
    ("train lenet --data digits --name ..", "--name must be a folder name"),
    ("train lenet --data digits --name ''", "--name"),
    ("train lenet --data digits --name a/b", "--name must be a folder name"),
    ("train lenet --data digits --device meta", "unknown device"),
    ("train lenet --data digits --device cuda", "CUDA is not available"),
    ("train lenet --data digits --project {w}/afile", "is a file"),
    ("train lenet --data digits --project {w}/afile/runs", "cannot use"),
    ("train --resume {w}/nowhere", "nothing to resume"),
    ("train --resume {w}/m.pt", "has no training state"),
    (f"train --resume {E}", "refusing to load"),
    ("train --resume {w}/emptydir", "nothing to resume"),
    ("train {w}/plain.py:Nope --data digits", "has no 'Nope'"),
    ("train {w}/syntax.py:Net --data digits", "cannot import"),
    ("train lenet --data digits --bogus", "No such option"),
    ("train {w}/stringy.py:Net --data digits", "returns str, not a tensor"),
    ("train {w}/wrongout.py:Net --data digits", "not [1, 10] class scores"),
    ("train lenet --data folder:{w}/bomb", "cannot read image"),
    ("train lenet --data folder:{w}/one", "at least 2 images"),
    ("train lenet --data mnist --data-dir {w}/badmnist", "unreadable"),
    # -------------------------------------------------------------------------------------------------- eval
    ("eval {w}/nowhere.pt --data digits", "not found"),
    (f"eval {E} --data digits", "refusing to load"),
    ("eval {w}/whole.pt --data digits", "refusing to load"),
    ("eval {w}/text.pt --data digits", "not a PyTorch file"),
    (f"eval {M}", "give --data"),
    (f"eval {M} --data cifar11", "unknown dataset"),
    (f"eval {M} --data digits", "3-channel"),
    (f"eval {G} --data digits", "does not know"),
    (f"eval {G} --data lines --split dev", "unknown split"),
    (f"eval {G} --data lines --batch-size 0", "--batch-size"),
    (f"eval {G} --data lines --min-accuracy 2", "--min-accuracy"),
    (f"eval {G} --data lines --min-accuracy -1", "--min-accuracy"),
    (f"eval {G} --data lines --device meta", "unknown device"),
    (f"eval {G} --data lines --model resnet18", "not resnet18"),
    ("eval {w}/img.png --data digits", "not a PyTorch file"),
    ("eval {w}/x.onnx --data digits", "not found"),
    (f"eval {M} --data folder:{{w}}/nowhere", "image folder not found"),
    # --------------------------------------------------------------------------------------------------- fcn
    ("fcn {w}/nowhere.pt", "not found"),
    (f"fcn {E}", "refusing to load"),
    ("fcn {w}/list.pt", "holds no model weights"),
    (f"fcn {M} -o {M} --force", "is the input file"),
    (f"fcn {M} -o {{w}}", "is a folder"),
    (f"fcn {M} -o {{w}}/emptydir", "is a folder"),
    (f"fcn {M} --tolerance -1", "--tolerance"),
    (f"fcn {M} --tolerance nan", "--tolerance"),
    (f"fcn {M} --model {{w}}/net.py:Net", "not {w}/net.py:Net"),
    (f"fcn {M} -o {{w}}/afile/x.pt", "cannot use"),
    # ---------------------------------------------------------------------------------------------- scoremap
    ("scoremap {w}/nowhere.pt {w}/img.png", "not found"),
    (f"scoremap {E} {{w}}/img.png", "refusing to load"),
    (f"scoremap {M}", "give at least one IMAGE"),
    (f"scoremap {M} {{w}}/nothere.png", "image not found"),
    (f"scoremap {M} {{w}}/broken.png -o {{w}}/out", "cannot read image"),
    (f"scoremap {M} {{w}}/tiny.png -o {{w}}/out", "smaller than the training size"),
    (f"scoremap {M} {{w}}/img.png --class nope -o {{w}}/out", "unknown class"),
    (f"scoremap {M} --scene trees -o {{w}}/out", "unknown scene"),
    (f"scoremap {M} --scene lines --scene-size axb -o {{w}}/out", "malformed size"),
    (f"scoremap {M} {{w}}/img.png -o {{w}}/afile", "cannot use"),
    (f"scoremap {M} {{w}}/img.png --device meta -o {{w}}/out", "unknown device"),
    # ------------------------------------------------------------------------------------------------ export
    (f"export {M}", "choose a format"),
    (f"export {M} --format tflite", "unknown format"),
    (f"export {M} --onnx --format pt2", "disagree"),
    ("export {w}/nowhere.pt --onnx", "not found"),
    (f"export {E} --onnx", "refusing to load"),
    ("export {w}/whole.pt --onnx", "refusing to load"),
    ("export nosuchnet --onnx", "unknown model"),
    (f"export {M} --onnx -o {M} --force", "is the input file"),
    (f"export {M} --onnx -o {{w}}", "is a folder"),
    (f"export {M} --onnx --opset 6", "unsupported opset"),
    (f"export {M} --onnx --opset 99", "unsupported opset"),
    (f"export {M} --onnx --opset x", "not a valid integer"),
    (f"export {M} --onnx --tolerance -1", "--tolerance"),
    (f"export {M} --onnx --tolerance nan", "--tolerance"),
    (f"export {M} --onnx --dynamic-size", "fully-convolutional"),
    (f"export {M} --onnx --exporter magic", "unknown exporter"),
    (f"export {M} --format pt2 --exporter dynamo", "has no exporter"),
    (f"export {M} --onnx -o {{w}}/afile/m.onnx", "cannot use"),
    (f"export {M} --onnx --model {{w}}/net.py:Net", "not {w}/net.py:Net"),
    # ----------------------------------------------------------------------------------- other model files
    ("export {w}/sd.pt --onnx --classes a,b", "2 class names for a model with 10 outputs"),
    ("export {w}/sd.pt --onnx --classes names.txt", "--classes file not found"),
    ("export {w}/sd.pt --onnx --classes a,a,b", "names 'a' twice"),
    ("export {w}/sd.pt --onnx --std 0,1,1", "> 0"),
    ("export {w}/sd.pt --onnx --mean x", "takes numbers"),
    ("export {w}/sd.pt --onnx --mean 0.5,0.5", "needs 1 or 3 values"),
    ("export {w}/sd.pt --onnx --mean nan", "finite"),
    ("export {w}/sd.pt --onnx --model resnet18", "does not fit resnet18"),
    ("export {w}/sd.pt --onnx --model nosuchnet", "unknown model"),
    ("export {w}/sd.pt --onnx --in 1x32x32", "takes 3-channel images"),
    ("fcn {w}/ts.pt", "TorchScript"),
    ("scoremap {w}/ts.pt {w}/img.png", "TorchScript"),
    ("summary {w}/ts.pt --in 3x2x2 --trust-code", "fails on a 1x3x2x2 input"),
    ("summary lenet5 --weights {w}/ts.pt --num-classes 3 --trust-code", "has 10 classes, not 3"),
    ("summary lenet5 --weights {w}/x.onnx", "not found"),
    ("summary {w}/x.onnx", "not found"),
    ("train lenet5 --data digits --weights {w}/list.pt", "holds no model weights"),
    ("train lenet5 --data digits --weights {w}/nothere.pt", "--weights file not found"),
    ("train lenet5 --data digits --weights {w}/gray.pt", "no tensor of"),
    ("train lenet5 --data digits --weights {w}/whole.pt", "refusing to load"),
    ("eval {w}/sd.pt", "give --data"),
    ("eval {w}/ts.pt --data digits --in 1x8x8 --trust-code", "fails on"),
    # ----------------------------------------------------------------------------------------------- predict
    (f"predict {M}", "Missing argument"),
    (f"predict {M} {{w}}/nothere.png", "image not found"),
    (f"predict {M} {{w}}/emptydir", "no images in"),
    (f"predict {M} {{w}}/img.png --topk 0", "--topk"),
    (f"predict {M} {{w}}/broken.png", "cannot read image"),
    (f"predict {M} {{w}}/img.png --csv {M}", "is the input file"),
    ("predict {w}/nothere.pt {w}/img.png", "not found"),
    (f"predict {E} {{w}}/img.png", "refusing to load"),
    # ------------------------------------------------------------------------------------------------ global
    ("nosuchcommand", "No such command"),
    ("--bogus", "No such option"),
]


@pytest.mark.parametrize("line,needle", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(ws, line, needle):
    import shlex

    argv = [a.replace("{w}", str(ws)) for a in shlex.split(line)]
    before = _snapshot(ws)
    extra = ["--project", str(ws / "runs")] if argv[0] == "train" and "--project" not in argv else []
    p = run_cnn(*argv, *extra, env={"CNN_DATA_DIR": str(ws / "emptydir")})
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert needle.replace("{w}", str(ws)) in lines[0], lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
    assert _snapshot(ws) == before and not (ws / "runs").exists() and not (ws / "PWNED").exists()


def test_there_are_at_least_150_cases():
    assert len(CASES) >= 150
