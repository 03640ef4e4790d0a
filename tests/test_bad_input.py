"""Careless and hostile input: one `error:` line and exit 2, nothing written, nothing run, nothing lost."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make_checkpoint, run_cnn

from cnncli.checkpoint import Checkpoint


def _one_error_line(p, code=2):
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in p.stderr, p.stderr
    return lines[-1]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "lenet", "--data", "digits", "--lr", "0"], "--lr must be a positive number"),
        (["train", "lenet", "--data", "digits", "--lr", "-0.1"], "--lr must be a positive number"),
        (["train", "lenet", "--data", "digits", "--label-smoothing", "nan"], "--label-smoothing"),
        (["train", "lenet", "--data", "digits", "--weight-decay", "-1"], "--weight-decay"),
        (["train", "lenet", "--data", "digits", "--workers", "-1"], "--workers"),
        (["train", "lenet", "--data", "digits", "--num-classes", "-3"], "--num-classes"),
        (["train", "lenet", "--data", "digits", "--nproc-per-node", "0"], "--nproc-per-node"),
        (["train", "lenet", "--data", "digits", "--name", "../../escaped"], "--name must be a folder name"),
        (["train", "lenet", "--data", "digits", "--batch-size", "100000"], "larger than the training set"),
        (["summary", "lenet5", "--device", "meta"], "unknown device 'meta'"),
    ],
)
def test_bad_values_are_exit_2_and_write_nothing(tmp_path, args, needle):
    extra = ["--project", str(tmp_path / "runs")] if args[0] == "train" else []
    line = _one_error_line(run_cnn(*args, *extra))
    assert needle in line
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


def test_project_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("not a folder")
    assert "is a file" in _one_error_line(run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path / "runs"))


@pytest.mark.parametrize("cmd", [["fcn"], ["export", "--onnx"]])
@pytest.mark.parametrize("tol", ["-1", "nan"])
def test_tolerance_must_be_a_non_negative_number(tmp_path, cmd, tol):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    assert "--tolerance" in _one_error_line(run_cnn(cmd[0], ck, *cmd[1:], "--tolerance", tol))
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


@pytest.mark.parametrize(
    "field,value",
    [("num_classes", -3), ("image_size", "32x32"), ("model", None), ("in_channels", 1.5), ("state_dict", "weights")],
)
def test_checkpoint_fields_of_the_wrong_type(tmp_path, field, value):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    d = torch.load(ck, weights_only=True)
    if field in ("model", "state_dict"):
        d[field] = value
    else:
        d["model"][field] = value
    torch.save(d, tmp_path / "bad.pt")
    for cmd in (["summary"], ["export", "--onnx"], ["fcn"], ["eval", "--data", "digits"]):
        line = _one_error_line(run_cnn(cmd[0], tmp_path / "bad.pt", *cmd[1:]))
        assert "not a cnncli checkpoint" in line


def test_resume_refuses_another_model_or_dataset(tmp_path):
    run = json.loads(
        run_cnn(
            "train", "linenet", "--data", "lines", "--max-steps", "3", "--project", tmp_path, "--json", check=0
        ).stdout
    )["run_dir"]
    before = os.listdir(run)
    for args in (["lenet", "--data", "lines"], ["linenet", "--data", "digits"]):
        assert "does not match" in _one_error_line(run_cnn("train", *args, "--resume", run))
    assert os.listdir(run) == before


def test_divergence_before_any_checkpoint_says_none_was_written(tmp_path):
    line = _one_error_line(run_cnn("train", "linenet", "--data", "lines", "--lr", "1e30", "--project", tmp_path), 1)
    assert "diverged" in line and "no checkpoint was written" in line


def test_user_model_calling_sys_exit_at_import(tmp_path):
    (tmp_path / "net.py").write_text("import sys\nsys.exit(3)\n")
    assert "cannot import" in _one_error_line(run_cnn("summary", f"{tmp_path / 'net.py'}:Net"))


def test_json_stdout_stays_one_document_when_the_model_prints(tmp_path):
    (tmp_path / "chatty.py").write_text(
        "import torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, num_classes=10, in_channels=3):\n"
        "        super().__init__()\n"
        "        print('building Net')\n"
        "        self.c = nn.Conv2d(in_channels, num_classes, 3)\n"
        "        self.p = nn.AdaptiveAvgPool2d(1)\n"
        "    def forward(self, x):\n"
        "        print('forward', x.shape)\n"
        "        return self.p(self.c(x)).flatten(1)\n"
    )
    p = run_cnn("summary", f"{tmp_path / 'chatty.py'}:Net", "--in", "3x16x16", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["params"] == 3 * 10 * 9 + 10  # stdout parses: the prints went to stderr
    assert "building Net" in p.stderr


def test_outputs_follow_the_umask(tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    old = os.umask(0o022)
    try:
        out = json.loads(run_cnn("fcn", ck, "--json", check=0).stdout)["path"]
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644 and stat.S_IMODE(os.stat(ck).st_mode) == 0o644


def test_a_closed_stdout_is_not_a_crash():
    p = subprocess.run(
        f"{sys.executable} -m cnncli shape --in 3x32x32 --k 3 >&-",
        shell=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "CI": "1"},
    )
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr


def test_checkpoint_round_trip_is_unchanged_by_the_checks(tmp_path):
    ck = Checkpoint.load(make_checkpoint(tmp_path / "m.pt", "lenet5"))
    assert ck.model.input_size == (3, 32, 32) and ck.model.num_classes == 10


NET = (
    "import os, torch.nn as nn\n"
    "open(os.environ['CNN_MARKER'], 'a').write('imported\\n')\n"
    "class Net(nn.Module):\n"
    "    def __init__(self, num_classes=10, in_channels=3):\n"
    "        super().__init__()\n"
    "        self.f = nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
    "                               nn.Linear(8, num_classes))\n"
    "    def forward(self, x):\n"
    "        return self.f(x)\n"
)


def test_a_checkpoint_never_decides_by_itself_to_import_a_python_file(tmp_path, monkeypatch):
    """A checkpoint trained from file.py:Class is rebuilt only when the user names the file (--model): a file read
    from disk never picks the code that runs."""
    marker = tmp_path / "imported"
    monkeypatch.setenv("CNN_MARKER", str(marker))
    (tmp_path / "net.py").write_text(NET)
    spec = f"{tmp_path / 'net.py'}:Net"
    p = run_cnn(
        "train",
        spec,
        "--data",
        "fake",
        "--max-steps",
        "2",
        "--project",
        tmp_path,
        "--json",
        env={"CNN_MARKER": str(marker)},
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    ck, run = out["best_checkpoint"], out["run_dir"]
    marker.unlink()
    cmds = [
        ["summary", ck],
        ["eval", ck, "--split", "val"],
        ["fcn", ck, "-o", tmp_path / "f.pt"],
        ["export", ck, "--onnx", "-o", tmp_path / "m.onnx"],
        ["scoremap", ck, "--scene", "lines"],
        ["train", "--resume", run, "--epochs", "2"],
    ]
    for cmd in cmds:
        line = _one_error_line(run_cnn(*cmd, env={"CNN_MARKER": str(marker)}))
        assert "imports a .py file only when you name it" in line and "net.py" in line
    assert not marker.exists()
    # named by the user: it runs
    assert run_cnn("summary", ck, "--model", spec, "--json", env={"CNN_MARKER": str(marker)}).returncode == 0
    p = run_cnn(
        "export", ck, "--onnx", "--model", spec, "-o", tmp_path / "m.onnx", "--json", env={"CNN_MARKER": str(marker)}
    )
    assert p.returncode == 0 and json.loads(p.stdout)["max_abs_diff"] < 1e-4
    assert marker.exists()


def test_model_flag_must_match_a_builtin_checkpoint(tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    assert "holds a lenet5, not resnet18" in _one_error_line(run_cnn("summary", ck, "--model", "resnet18"))


def test_export_cleans_the_temp_file_of_a_killed_export(tmp_path):
    ck = make_checkpoint(tmp_path / "m.pt", "lenet5")
    (tmp_path / ".m.onnx.abc123.tmp.onnx").write_bytes(b"half a file")  # what a SIGKILL mid-export leaves
    (tmp_path / ".other.onnx.x.tmp").write_bytes(b"someone else's")
    assert run_cnn("export", ck, "--onnx").returncode == 0
    assert sorted(os.listdir(tmp_path)) == [".other.onnx.x.tmp", "m.onnx", "m.pt"]


@pytest.mark.parametrize(
    "forward,needle",
    [
        ("return 'logits'", "returns str, not a tensor"),
        ("return x.view(-1, 999)", "the model fails on a 1x3x16x16 input"),
    ],
)
def test_a_broken_forward_is_named(tmp_path, forward, needle):
    (tmp_path / "bad.py").write_text(
        f"import torch.nn as nn\nclass Net(nn.Module):\n    def forward(self, x):\n        {forward}\n"
    )
    line = _one_error_line(run_cnn("summary", f"{tmp_path / 'bad.py'}:Net", "--in", "3x16x16"))
    assert needle in line


def test_an_input_too_large_for_memory(tmp_path):
    line = _one_error_line(run_cnn("summary", "lenet5", "--in", "3x400000x400000"))
    assert "too large" in line


@pytest.mark.parametrize(
    "make_args",
    [
        lambda t: ["train", "linenet", "--data", "lines", "--max-steps", "1", "--project", t / "afile" / "runs"],
        lambda t: [
            "scoremap",
            make_checkpoint(t / "m.pt", "linenet", (1, 32, 32), 2),
            "--scene",
            "lines",
            "-o",
            t / "afile",
        ],
    ],
)
def test_an_unusable_output_place_is_exit_2(tmp_path, make_args):
    (tmp_path / "afile").write_text("a file where a folder is due")
    line = _one_error_line(run_cnn(*make_args(tmp_path)))
    assert "cannot use" in line and "afile" in line


@pytest.mark.parametrize(
    "layers,needle",
    [
        ("conv(6,k=5,stirde=2)", "unknown keyword 'stirde'"),
        ("maxpool(2,ceil=banana)", "'banana' is not true or false"),
        ("fc(10,k=3)", "unknown keyword 'k'"),
        ("conv(" + "9" * 5000 + ")", "too large"),
    ],
)
def test_layers_typos_are_reported_not_ignored(layers, needle):
    line = _one_error_line(run_cnn("shape", "--in", "3x32x32", "--layers", layers))
    assert needle in line


@pytest.mark.parametrize("flag", ["--in", "--k"])
def test_numbers_beyond_pythons_int_limit(flag):
    value = "3x" + "9" * 5000 + "x32" if flag == "--in" else "9" * 5000
    assert "too large" in _one_error_line(
        run_cnn("shape", "--in", "3x32x32", flag, value) if flag == "--k" else run_cnn("shape", flag, value)
    )


def test_eval_matches_classes_by_name(tmp_path, digits_run):
    """A digits model on `lines` is refused naming the classes; a model whose classes are a reordered superset of
    the data's is scored by name, not by position."""
    best = digits_run["best_checkpoint"]
    line = _one_error_line(run_cnn("eval", best, "--data", "lines"))
    assert "'horizontal'" in line and "does not know" in line
    # the same weights with the class list reversed (and the head's rows reversed): identical accuracy by name
    d = torch.load(best, weights_only=True)
    d["classes"] = d["classes"][::-1]
    last = [k for k in d["state_dict"] if k.endswith(".weight")][-1]  # the output layer: its rows are the classes
    for k in (last, last[: -len("weight")] + "bias"):
        d["state_dict"][k] = d["state_dict"][k].flip(0)
    torch.save(d, tmp_path / "reversed.pt")
    a = json.loads(run_cnn("eval", best, "--json", check=0).stdout)
    b = json.loads(run_cnn("eval", tmp_path / "reversed.pt", "--json", check=0).stdout)
    assert b["accuracy"] == a["accuracy"] > 0.9


@pytest.mark.parametrize("workers", ["0", "1"])
def test_an_unreadable_image_is_named(tmp_path, workers):
    from fixtures import write_image_folder

    root = write_image_folder(str(tmp_path / "imgs"))
    bad = os.path.join(root, "dogs", "5.png")
    with open(bad, "r+b") as f:  # truncated: the header survives, the pixels do not
        f.truncate(60)
    p = run_cnn(
        "train",
        "smallcnn",
        "--data",
        f"folder:{root}",
        "--img-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--workers",
        workers,
        "--project",
        tmp_path / "runs",
    )
    line = _one_error_line(p)
    assert "cannot read image" in line and bad in line


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_early_signal_is_never_lost(tmp_path, sig):
    """While torch is imported and data loaded, before training starts: exit 130 at once, also when the shell
    started cnn with SIGINT ignored (a background job in a script), and no run is left behind."""
    import signal
    import time

    p = subprocess.Popen(
        [sys.executable, "-m", "cnncli", "train", "linenet", "--data", "lines", "--project", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.time() + 60  # signal it while torch is being loaded: the moment that used to lose signals
    while p.poll() is None and time.time() < deadline:
        with open(f"/proc/{p.pid}/maps") as f:
            if "libtorch" in f.read():
                break
        time.sleep(0.01)
    p.send_signal(getattr(signal, sig))
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and err.strip().splitlines()[-1].startswith(("error: interrupted", "interrupted:")), err
    assert not list(tmp_path.rglob("best.pt"))  # stopped, not run to the end
