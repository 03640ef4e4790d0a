"""The promises of #26, each proved over its whole class, not by examples.

- the output gate: every output option of every command, against a device, a FIFO, a folder and an input;
- the reading gate: every reader (MODEL, --weights, images, --classes, a user .py), against a FIFO, a device,
  a symbolic link loop, a huge (sparse) file and a folder;
- OS errors while writing (a file-size limit, as a full disk, through RLIMIT_FSIZE): exit 1, no file, the old one kept;
- text a file decides (class names) never reaches the terminal raw, nor whole;
- numbers: NaN weights are named (exit 1) in every command that runs a model; JSON never has NaN;
- ONNX files ONNX Runtime refuses: exit 2 with the reason, in every command that runs one;
- signals: an interrupt that a library turned into an exception is exit 130 and commits nothing;
- a run folder has one writer.
Each case: one `error:` line, no traceback, nothing on stdout, no file added, changed or removed.
"""

import hashlib
import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_checkpoint, run_cnn


def _snapshot(w):
    out = {}
    for p in sorted(w.rglob("*")):
        st = os.lstat(p)
        if stat.S_ISREG(st.st_mode):
            out[p.relative_to(w).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[p.relative_to(w).as_posix()] = stat.S_IFMT(st.st_mode)
    return out


def _one_error(p, code=2):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""
    return lines[0]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    from PIL import Image

    w = tmp_path_factory.mktemp("gates")
    make_checkpoint(w / "m.pt", "lenet5")
    from dataclasses import replace

    from cnncli.checkpoint import Checkpoint

    ck = Checkpoint.load(str(w / "m.pt"))  # named as the `fake` dataset's classes, so eval runs on it
    Checkpoint(
        ck.model, ck.state_dict, replace(ck.preprocess, classes=tuple(f"class{i}" for i in range(10))), "fake"
    ).save(str(w / "m.pt"))
    Image.new("RGB", (40, 40), (90, 30, 200)).save(w / "img.png")
    (w / "names.txt").write_text("\n".join(f"c{i}" for i in range(10)))
    (w / "net.py").write_text("import torch.nn as nn\nclass Net(nn.Module):\n    pass\n")
    os.mkfifo(w / "fifo")
    if os.geteuid() == 0:  # a character device of our own (the null device's numbers), never the machine's
        os.mknod(w / "dev", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    else:
        os.symlink("/dev/null", w / "dev")
    os.symlink(w / "loop_b", w / "loop_a")
    os.symlink(w / "loop_a", w / "loop_b")
    (w / "folder").mkdir()
    return w


# ------------------------------------------------------------------------------------------------- writing

# every option that names a file a command writes, with the arguments that make the command reach it
FILE_OUTPUTS = {
    "export -o": lambda w, out: ["export", w / "m.pt", "--onnx", "-o", out, "--force"],
    "export --format pt2 -o": lambda w, out: ["export", w / "m.pt", "--format", "pt2", "-o", out, "--force"],
    "fcn -o": lambda w, out: ["fcn", w / "m.pt", "-o", out, "--force"],
    "predict --csv": lambda w, out: ["predict", w / "m.pt", w / "img.png", "--csv", out, "--force"],
    "eval --confusion": lambda w, out: ["eval", w / "m.pt", "--data", "fake", "--confusion", out, "--force"],
}
# every option that names a folder a command writes into
FOLDER_OUTPUTS = {
    "scoremap -o": lambda w, out: ["scoremap", w / "m.pt", w / "img.png", "-o", out],
    "inspect kernels -o": lambda w, out: ["inspect", "kernels", w / "m.pt", "-o", out],
    "inspect features -o": lambda w, out: ["inspect", "features", w / "m.pt", w / "img.png", "-o", out],
    "inspect rf -o": lambda w, out: ["inspect", "rf", w / "m.pt", w / "img.png", "-o", out],
    "inspect cam -o": lambda w, out: ["inspect", "cam", w / "m.pt", w / "img.png", "-o", out],
    "train --project": lambda w, out: ["train", "lenet5", "--data", "fake", "--epochs", "1", "--project", out],
}
BAD_FILE_TARGETS = {
    "device": ("dev", "character device"),
    "fifo": ("fifo", "FIFO"),
    "folder": ("folder", "folder"),
    "input": ("m.pt", "input"),
    "link loop": ("loop_a", "loop"),
    "under a file": ("img.png/x", "not a folder"),
    "long name": ("x" * 300, "too long"),
}


@pytest.mark.parametrize("target", BAD_FILE_TARGETS)
@pytest.mark.parametrize("option", FILE_OUTPUTS)
def test_no_output_option_writes_over_a_device_fifo_folder_or_input(ws, option, target):
    name, needle = BAD_FILE_TARGETS[target]
    before = _snapshot(ws)
    line = _one_error(run_cnn(*FILE_OUTPUTS[option](ws, ws / name)))
    assert needle in line, line
    assert _snapshot(ws) == before


@pytest.mark.parametrize("target", ["device", "fifo", "file", "under a file", "long name"])
@pytest.mark.parametrize("option", FOLDER_OUTPUTS)
def test_no_output_folder_is_a_device_fifo_or_file(ws, option, target):
    name = {"device": "dev", "fifo": "fifo", "file": "img.png", "under a file": "img.png/sub", "long name": "y" * 300}[
        target
    ]
    before = _snapshot(ws)
    line = _one_error(run_cnn(*FOLDER_OUTPUTS[option](ws, ws / name)))
    assert any(s in line for s in ("not a folder", "is a file", "too long")), line
    assert _snapshot(ws) == before


def test_the_gates_hold_in_the_writer_itself(tmp_path):
    """atomic_write refuses a device or a FIFO even when a command forgot its check, and a signal stops a commit."""
    from cnncli import errors, fileio

    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(errors.UsageError, match="FIFO"):
        fileio.write_text(str(tmp_path / "fifo"), "x")
    fileio.write_text(str(tmp_path / "a.txt"), "old")
    errors.mark_interrupted()
    try:
        with pytest.raises(errors.Interrupted):
            fileio.write_text(str(tmp_path / "a.txt"), "new")
    finally:
        errors.begin_command()
    assert (tmp_path / "a.txt").read_text() == "old" and sorted(os.listdir(tmp_path)) == ["a.txt", "fifo"]
    long = tmp_path / ("n" * 250)  # the target fits NAME_MAX; its temp name must too
    fileio.write_text(str(long), "ok")
    assert long.read_text() == "ok"


SCRIPT = """
import contextlib, io, json, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
from cnncli.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""
FULL_DISK = ["export -o", "export --format pt2 -o", "fcn -o", "eval --confusion"]


def test_a_write_that_runs_out_of_space_is_exit_1_and_keeps_the_old_file(ws, tmp_path):
    """Every file output, written under a 4 KiB file-size limit (EFBIG, what a full disk or a quota does), in one
    process: exit 1 with one line, the previous file intact, no temp file left."""
    outs = [tmp_path / f"out{i}.bin" for i in range(len(FULL_DISK))]
    for out in outs:
        out.write_bytes(b"the previous good file")
    argv = [[str(a) for a in FILE_OUTPUTS[option](ws, out)] for option, out in zip(FULL_DISK, outs)]
    p = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    for option, (code, err) in zip(FULL_DISK, json.loads(p.stdout.strip().splitlines()[-1])):
        line = err.strip().splitlines()[-1]
        assert code == 1 and line.startswith("error: cannot write") and "Traceback" not in err, (option, err)
        assert "File too large" in line or "No space" in line, (option, line)
    assert all(out.read_bytes() == b"the previous good file" for out in outs)
    assert sorted(os.listdir(tmp_path)) == sorted(o.name for o in outs)  # no temp file left


def test_stdout_on_a_full_device_is_one_error_line():
    with open("/dev/full", "w") as full:
        p = subprocess.run(
            [sys.executable, "-m", "cnncli", "shape", "--in", "3x32x32", "--k", "3"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
    assert p.returncode == 1 and p.stderr.strip().startswith("error: cannot write the result"), p.stderr
    assert "Traceback" not in p.stderr


def test_a_run_folder_has_one_writer(tmp_path):
    from cnncli.fileio import FolderLock

    run_cnn("train", "lenet5", "--data", "fake", "--max-steps", "2", "--project", tmp_path, "--name", "r", check=0)
    run = tmp_path / "r"
    before = _snapshot(run)
    lock = FolderLock(str(run)).acquire()  # another cnn train still holds the run
    try:
        line = _one_error(run_cnn("train", "--resume", run, "--epochs", "2", "--max-steps", "4"))
    finally:
        lock.release()
    assert "in use by another cnn process" in line and _snapshot(run) == before
    p = run_cnn("train", "--resume", run, "--epochs", "2", "--max-steps", "4", check=0)  # free again: it resumes
    assert p.returncode == 0


# ------------------------------------------------------------------------------------------------- reading

READERS = {
    "summary MODEL": lambda w, f: ["summary", f],
    "eval MODEL": lambda w, f: ["eval", f, "--data", "fake"],
    "predict MODEL": lambda w, f: ["predict", f, w / "img.png"],
    "export MODEL": lambda w, f: ["export", f, "--onnx", "-o", w / "never.onnx"],
    "fcn MODEL": lambda w, f: ["fcn", f, "-o", w / "never.pt"],
    "scoremap MODEL": lambda w, f: ["scoremap", f, w / "img.png", "-o", w / "never"],
    "inspect MODEL": lambda w, f: ["inspect", "kernels", f, "-o", w / "never"],
    "--weights": lambda w, f: ["summary", "lenet5", "--weights", f],
    "train --weights": lambda w, f: ["train", "lenet5", "--data", "fake", "--weights", f, "--project", w / "never"],
    "predict IMAGE": lambda w, f: ["predict", w / "m.pt", f],
    "scoremap IMAGE": lambda w, f: ["scoremap", w / "m.pt", f, "-o", w / "never"],
    "inspect IMAGE": lambda w, f: ["inspect", "features", w / "m.pt", f, "-o", w / "never"],
    "inspect cam IMAGE": lambda w, f: ["inspect", "cam", w / "m.pt", w / "img.png", f, "-o", w / "never"],
    "--classes": lambda w, f: ["export", w / "m.pt", "--onnx", "--classes", f, "-o", w / "never.onnx"],
    "user .py": lambda w, f: ["summary", f"{f}:Net"],
}
BAD_SOURCES = {
    "fifo": ("fifo", "FIFO"),
    "device": ("dev", "character device"),
    "link loop": ("loop_a", "loop"),
    "folder": ("folder", "folder"),
    "huge": ("huge", "too large"),
}


@pytest.mark.parametrize("source", BAD_SOURCES)
@pytest.mark.parametrize("reader", READERS)
def test_no_reader_blocks_on_or_reads_a_fifo_device_loop_folder_or_huge_file(ws, tmp_path, reader, source):
    name, needle = BAD_SOURCES[source]
    path = ws / name
    if source == "huge":  # sparse: a 300 GiB model, 3 GiB image, 100 MiB text file, on no disk space at all
        size = {"--classes": 100 << 20, "user .py": 100 << 20}.get(reader, 3 << 30)
        if "MODEL" in reader or "weights" in reader:
            size = 300 << 30
        path = tmp_path / "huge"
        with open(path, "wb") as f:
            f.truncate(size)
    if reader == "user .py":  # the same kinds of file, named as Python files
        os.symlink(path, tmp_path / "net.py")
        path = tmp_path / "net.py"
    before = _snapshot(ws)
    line = _one_error(run_cnn(*READERS[reader](ws, path)))
    assert needle in line, line
    assert _snapshot(ws) == before


@pytest.mark.parametrize(
    "dataset,relpath", [("mnist", "MNIST/raw/train-images-idx3-ubyte"), ("cifar10", "cifar-10-batches-py/data_batch_1")]
)
def test_dataset_files_that_are_fifos_are_named_not_read(tmp_path, dataset, relpath):
    """torchvision's readers would block on a FIFO among a dataset's files: the gate checks them all first."""
    path = tmp_path / relpath
    path.parent.mkdir(parents=True)
    os.mkfifo(path)
    line = _one_error(
        run_cnn("train", "lenet5", "--data", dataset, "--data-dir", tmp_path, "--project", tmp_path / "r")
    )
    assert "FIFO" in line and relpath.split("/")[-1] in line


def test_a_fifo_among_a_folders_images_is_named_before_a_run_starts(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "d" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8)).save(tmp_path / "d" / c / f"{i}.png")
    os.mkfifo(tmp_path / "d" / "a" / "pipe.png")
    line = _one_error(run_cnn("train", "lenet5", "--data", f"folder:{tmp_path / 'd'}", "--project", tmp_path / "r"))
    assert "FIFO" in line and "pipe.png" in line and not (tmp_path / "r").exists()


def test_hidden_files_and_link_loops_in_a_folder(tmp_path):
    """`._x.png` (macOS), `.DS_Store`, `.ipynb_checkpoints/` are not images or classes; a link loop inside a class
    folder is followed once: every image is counted once."""
    from PIL import Image

    from cnncli.data import load_dataset

    root = tmp_path / "shapes"
    for c, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250))):
        (root / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), colour).save(root / c / f"{i}.png")
        (root / c / f"._{c}.png").write_bytes(b"\x00\x05\x16\x07 Mac OS X resource fork")
        os.symlink(root / c, root / c / "again")  # a loop: a -> a
    (root / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / ".ipynb_checkpoints" / "0-checkpoint.png")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    ds = load_dataset(f"folder:{root}")
    assert ds.classes == ["a", "b"]
    assert ds.num_samples("all") == 10 and len({p for p, _ in ds.split("all")}) == 10
    assert "skipped 4 hidden" in ds.notes[0]  # ._a.png, ._b.png, .ipynb_checkpoints, .DS_Store: said


# -------------------------------------------------------------------------------------------------- images


def test_one_decoder_applies_exif_orientation_and_keeps_16_bit_and_palette_images(tmp_path):
    import numpy as np
    from PIL import Image

    from cnncli.data.images import read_image

    img = Image.new("RGB", (20, 10), (200, 10, 10))  # stored 20 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated by 90 degrees: 10 wide, 20 high
    img.save(tmp_path / "phone.jpg", exif=exif.tobytes())
    assert tuple(read_image(str(tmp_path / "phone.jpg"), 3).shape) == (3, 20, 10)
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(tmp_path / "16bit.png")
    assert int(read_image(str(tmp_path / "16bit.png"), 1).max()) == 128  # half of 65535, not clipped to 255
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(tmp_path / "pal.png")
    assert read_image(str(tmp_path / "pal.png"), 3)[:, 0, 0].tolist() == [10, 200, 30]
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    r, g, b = read_image(str(tmp_path / "cmyk.jpg"), 3)[:, 0, 0].tolist()
    assert r > 200 and g < 60 and b < 60


def test_the_same_image_reaches_the_model_as_the_same_tensor_everywhere(ws, tmp_path):
    """eval and predict (the folder loader), inspect and scoremap read one image through one decoder and one
    resize policy: the normalised input tensors are identical."""
    from PIL import Image

    from cnncli.data.images import read_image, resize
    from cnncli.data.loader import FolderLoader
    from cnncli.models.open import ModelRequest, open_model

    Image.effect_noise((57, 45), 60).convert("RGB").save(tmp_path / "photo.png")
    path = str(tmp_path / "photo.png")
    opened = open_model(str(ws / "m.pt"), ModelRequest())
    pre = opened.preprocess
    x, _ = next(
        iter(
            FolderLoader(
                [(path, 0)],
                image_size=pre.input_size[1:],
                channels=3,
                batch_size=1,
                mean=pre.mean,
                std=pre.std,
                train=False,
                workers=0,
            )
        )
    )
    from cnncli.cli.inspect_ import _image

    _, inspected = _image(opened, path)
    assert torch.equal(x[0], inspected)
    from cnncli.engine.scoremap import images_from

    assert torch.equal(images_from([path], 3)[0][1], read_image(path, 3))
    assert torch.equal(pre.normalize(resize(read_image(path, 3), pre.input_size[1:])), inspected)
    from cnncli.engine.cam import CamJob

    job = CamJob.prepare(opened, [path], str(tmp_path / "cams"), "cpu", class_name=None, method="gradcam", layer=None)
    assert torch.equal(job._batch(job.images)[0], inspected)


# ---------------------------------------------------------------------------------------------------- text


def test_names_from_a_file_never_drive_the_terminal_nor_flood_it(tmp_path):
    from cnncli.checkpoint import Checkpoint

    ck = Checkpoint.load(make_checkpoint(tmp_path / "m.pt", "lenet5"))
    evil = ["\x1b]0;pwned\x07\x1b[2J", "x" * 1_000_000] + [f"c{i}" for i in range(2, 10)]
    from dataclasses import replace

    Checkpoint(ck.model, ck.state_dict, replace(ck.preprocess, classes=tuple(evil))).save(str(tmp_path / "e.pt"))
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "i.png")
    for argv in (
        ["predict", tmp_path / "e.pt", tmp_path / "i.png", "--topk", "10"],
        ["summary", tmp_path / "e.pt"],
        ["eval", tmp_path / "e.pt", "--data", "fake"],
    ):
        p = run_cnn(*argv)
        text = p.stdout + p.stderr
        assert "\x1b" not in text and "\x07" not in text, argv
        assert max(len(line) for line in text.splitlines()) <= 2000 and len(text) < 50_000, argv
    p = run_cnn("predict", tmp_path / "e.pt", tmp_path / "i.png", "--topk", "10", "--json")
    got = {t["class"] for t in json.loads(p.stdout)["predictions"][0]["topk"]}
    assert evil[0] in got  # --json carries the names exactly (escaped by JSON itself)


# ------------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("value", ["nan", "inf"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "fcn", "scoremap"])
def test_nan_or_inf_weights_are_named_and_never_scored(tmp_path, command, value):
    from cnncli.checkpoint import Checkpoint

    ck = Checkpoint.load(make_checkpoint(tmp_path / "m.pt", "lenet5"))
    state = dict(ck.state_dict)
    name = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    state[name] = state[name].clone()
    state[name][0, 0, 0, 0] = float(value)
    Checkpoint(ck.model, state, ck.preprocess).save(str(tmp_path / "bad.pt"))
    from PIL import Image

    Image.new("RGB", (32, 32), (100, 100, 100)).save(tmp_path / "i.png")
    before = sorted(os.listdir(tmp_path))
    argv = {
        "eval": ["eval", tmp_path / "bad.pt", "--data", "fake", "--json"],
        "predict": ["predict", tmp_path / "bad.pt", tmp_path / "i.png", "--json"],
        "export": ["export", tmp_path / "bad.pt", "--onnx"],
        "fcn": ["fcn", tmp_path / "bad.pt"],
        "scoremap": ["scoremap", tmp_path / "bad.pt", tmp_path / "i.png", "-o", tmp_path / "maps"],
    }[command]
    p = run_cnn(*argv)
    line = _one_error(p, code=1)
    assert "NaN or infinite" in line and name in line, line
    assert sorted(os.listdir(tmp_path)) == before


def test_json_never_holds_nan_or_infinity():
    from cnncli.fileio import json_text

    text = json_text({"loss": float("nan"), "a": [float("inf"), 1.5], "b": {"c": -float("inf")}})
    assert json.loads(text) == {"loss": None, "a": [None, 1.5], "b": {"c": None}}
    assert "NaN" not in text and "Infinity" not in text


# ----------------------------------------------------------------------------------------------------- ONNX


def _onnx_files(w):
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])
    x2 = helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 3, 32, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])
    files = {}
    g = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example.unknown")], "g", [x], [y])
    files["unknown op domain"] = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example.unknown", 1)]
    )
    g = helper.make_graph(
        [helper.make_node("Add", ["x", "x2"], ["s"]), helper.make_node("Flatten", ["s"], ["y"])], "g", [x, x2], [y]
    )
    files["two inputs"] = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    g = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g", [x], [y])
    files["invalid graph"] = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    out = {}
    for k, m in files.items():
        path = w / (k.replace(" ", "_") + ".onnx")
        onnx.save(m, path)
        out[k] = path
    (w / "garbage.onnx").write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    out["not protobuf"] = w / "garbage.onnx"
    return out


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_onnx_files_the_runtime_refuses_are_exit_2_with_the_reason(ws, tmp_path, command):
    for kind, path in _onnx_files(tmp_path).items():
        argv = {"eval": ["eval", path, "--data", "fake"], "predict": ["predict", path, ws / "img.png"]}[command]
        line = _one_error(run_cnn(*argv))
        assert str(path) in line and ("ONNX" in line or "graph inputs" in line), (kind, line)


# -------------------------------------------------------------------------------------------------- signals


def test_an_interrupt_inside_an_exporter_is_exit_130_and_writes_nothing(ws, tmp_path, monkeypatch):
    """Ctrl-C while the file is checked comes back from onnxruntime's import as an ImportError; it must not send
    the export on to the fallback exporter, nor leave a file."""
    import cnncli.export as export
    from cnncli.cli import on_signal

    def interrupted_check(path, job):
        try:
            on_signal(2, None)  # Ctrl-C arrives while onnxruntime initialises...
        except SystemExit:
            raise ImportError("initialization failed") from None  # ...and comes back as its ImportError

    monkeypatch.setattr(export, "onnx_check", interrupted_check)  # export_formats() reads it at each call
    p = run_cnn("export", ws / "m.pt", "--onnx", "-o", tmp_path / "x.onnx")
    assert p.returncode == 130 and p.stderr.strip().splitlines()[-1] == "error: interrupted", p.stderr
    assert "torchscript" not in p.stderr and os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------- checkpoint fields

WRONG = [None, float("nan")]  # absent (no dict, list or number), not a number


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    run_cnn("train", "lenet5", "--data", "fake", "--max-steps", "2", "--project", root, "--name", "r", check=0)
    return root / "r"


def test_every_checkpoint_field_of_the_wrong_type_is_exit_2_or_ignored(run_dir, tmp_path):
    """The boundary by construction: every field of a last.pt, replaced by a value of each wrong type, is read
    where it is read (checkpoint.from_dict, Preprocess, the trainer's _restore) and refused as input, or unused:
    never a TypeError, a KeyError or a NaN taken for a number."""
    d = torch.load(run_dir / "last.pt", weights_only=True)
    bad = tmp_path / "b"
    bad.mkdir()
    broken = []
    for key in d:
        numeric = isinstance(d[key], (int, float)) and not isinstance(d[key], bool)
        for value in WRONG if numeric else WRONG[:1]:  # NaN where a number is due; None everywhere
            torch.save({**d, key: value}, bad / "last.pt")
            for argv in (["train", "--resume", bad, "--epochs", "2"],):  # reads every field summary reads, and more
                p = run_cnn(*argv)
                lines = p.stderr.strip().splitlines()
                ok = p.returncode == 0 or (p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "))
                if not ok or "Traceback" in p.stderr:
                    broken.append((key, value, argv[0], p.returncode, lines[-1:]))
    assert not broken, broken[:5]
