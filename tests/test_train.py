"""`cnn train` and `cnn eval` end to end, as real processes writing real files."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, run_cnn
from fixtures import write_cifar10, write_image_folder


def _json(p):
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_linenet_on_lines_reaches_99_9(tmp_path, lines_run):
    out = lines_run  # `cnn train linenet --data lines --json`, the defaults, run once per session
    assert out["test_accuracy"] >= 0.999 and out["best_accuracy"] >= 0.999
    assert set(out) >= {
        "run_dir",
        "best_checkpoint",
        "epochs",
        "best_accuracy",
        "final_accuracy",
        "images_per_second",
        "device",
        "precision",
    }
    run = out["run_dir"]
    for f in ("args.json", "metrics.csv", "last.pt", "best.pt", "curves.png", "summary.json"):
        assert os.path.getsize(os.path.join(run, f)) > 0, f
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == out["epochs"] == 4 and float(rows[-1]["val_accuracy"]) == pytest.approx(
        out["final_accuracy"], abs=1e-5
    )
    # best.pt is the epoch of the best val accuracy, a tie going to the later epoch
    best = max(rows, key=lambda r: (float(r["val_accuracy"]), int(r["epoch"])))
    assert torch.load(os.path.join(run, "best.pt"), weights_only=True)["epoch"] == int(best["epoch"])
    with open(os.path.join(run, "curves.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the checkpoint is a plain dict: weights_only loading, and everything needed to rebuild the model
    ck = torch.load(os.path.join(run, "best.pt"), weights_only=True)
    assert ck["model"] == {"name": "linenet", "num_classes": 2, "in_channels": 1, "image_size": [32, 32]}
    assert ck["classes"] == ["horizontal", "vertical"] and ck["normalization"]["mean"]
    assert ck["versions"]["torch"] and ck["args"]["data"] == "lines"
    last = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert {"optimizer", "scheduler", "scaler", "rng"} <= set(last)

    # eval on the checkpoint, with its own preprocessing; CI gate both ways
    ev = _json(
        run_cnn("eval", os.path.join(run, "best.pt"), "--data", "lines", "--json", "--confusion", tmp_path / "conf.png")
    )
    assert ev["accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-6)
    assert set(ev) >= {"accuracy", "top5", "loss", "per_class", "samples", "images_per_second"}
    assert ev["samples"] == 10000 and ev["top5"] is None and set(ev["per_class"]) == {"horizontal", "vertical"}
    assert (tmp_path / "conf.png").read_bytes()[:4] == b"\x89PNG"
    assert run_cnn("eval", os.path.join(run, "best.pt"), "--min-accuracy", "0.99").returncode == 0
    gate = run_cnn("eval", os.path.join(run, "best.pt"), "--min-accuracy", "1.0")
    if ev["accuracy"] < 1.0:
        assert gate.returncode == 1 and "below --min-accuracy" in gate.stderr

    # an existing run name gets a numbered sibling, never overwritten
    project = os.path.dirname(run)
    again = _json(
        run_cnn(
            "train", "linenet", "--data", "lines", "--project", project, "--name", "lines", "--max-steps", "5", "--json"
        )
    )
    assert again["run_dir"] == os.path.join(project, "lines2")
    assert torch.load(os.path.join(run, "best.pt"), weights_only=True)["metrics"] == ck["metrics"]  # untouched


def test_lenet_on_digits(digits_run):
    assert digits_run["test_accuracy"] >= 0.95  # `cnn train lenet --data digits --epochs 20`


def _metrics_rows(run):
    """Epochs finished: last.pt is written first, then metrics.csv."""
    path = os.path.join(run, "metrics.csv")
    if not os.path.exists(path) or not os.path.exists(os.path.join(run, "last.pt")):
        return 0
    with open(path) as f:
        return max(0, len(f.read().strip().splitlines()) - 1)


def _wait_for_first_epoch(p, run):
    deadline = time.time() + 240
    while _metrics_rows(run) < 1 and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert p.poll() is None, "the run finished before it could be interrupted"


def _train_args(tmp_path, name):
    return [
        "train",
        "linenet",
        "--data",
        "lines",
        "--epochs",
        "3",
        "--deterministic",
        "--project",
        str(tmp_path),
        "--name",
        name,
        "--device",
        "cpu",
        "--precision",
        "32",
    ]


def _start(tmp_path, name):
    env = {**os.environ, "CI": "1"}
    args = [sys.executable, "-m", "cnncli", *_train_args(tmp_path, name)]
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _final_state(run):
    ck = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = list(csv.DictReader(f))
    return ck, rows


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    # in this process (the same command, threads and precision as _start's): a subprocess would add its start-up
    tmp = tmp_path_factory.mktemp("ref")
    run_cnn(*_train_args(tmp, "ref"), check=0)
    return _final_state(os.path.join(tmp, "ref"))


def _assert_same_run(a, b):
    ck_a, rows_a = a
    ck_b, rows_b = b
    assert rows_a == [
        {**r, "images_per_second": rows_a[i]["images_per_second"], "seconds": rows_a[i]["seconds"]}
        for i, r in enumerate(rows_b)
    ]
    for k, v in ck_a["state_dict"].items():
        assert torch.equal(v, ck_b["state_dict"][k]), k


def test_sigkill_then_resume_matches_uninterrupted(tmp_path, uninterrupted):
    p = _start(tmp_path, "killed")
    run = os.path.join(tmp_path, "killed")
    _wait_for_first_epoch(p, run)
    p.send_signal(signal.SIGKILL)
    p.wait()
    torch.load(os.path.join(run, "last.pt"), weights_only=True)  # never half-written (a kill may leave a .tmp)
    r = run_cnn("train", "--resume", run, "--json")
    assert r.returncode == 0, r.stderr
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]  # stale temp files are cleaned on resume
    assert json.loads(r.stdout)["run_dir"] == os.path.abspath(run)
    _assert_same_run(uninterrupted, _final_state(run))


def test_sigterm_mid_epoch_writes_last_and_resumes_exactly(tmp_path, uninterrupted):
    p = _start(tmp_path, "term")
    run = os.path.join(tmp_path, "term")
    _wait_for_first_epoch(p, run)
    time.sleep(0.3)  # into the second epoch
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "resume with: cnn train --resume" in err
    ck = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert ck["step_in_epoch"] > 0  # stopped mid-epoch, after finishing a step
    r = run_cnn("train", "--resume", run)
    assert r.returncode == 0, r.stderr
    _assert_same_run(uninterrupted, _final_state(run))


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ.get('CNN_EVIL_MARKER', '/tmp/cnn-evil-marker')}",))


def test_pickled_checkpoint_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    os.environ["CNN_EVIL_MARKER"] = str(marker)
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"name": "lenet5"}, "state_dict": {}, "payload": _Evil()}, evil)
    for cmd in (["eval", evil, "--data", "digits"], ["summary", evil], ["export", evil, "--onnx"], ["fcn", evil]):
        p = run_cnn(*cmd)
        assert p.returncode == 2, p.stderr
        assert "refusing to load" in p.stderr and "pickled" in p.stderr and "Traceback" not in p.stderr
    assert not marker.exists()


def test_divergence_exits_1_with_clear_message(tmp_path):
    p = run_cnn("train", "linenet", "--data", "lines", "--lr", "1e30", "--project", tmp_path, "--max-steps", "200")
    assert p.returncode == 1, p.stderr
    assert "diverged" in p.stderr and "Traceback" not in p.stderr
    run = tmp_path / "train"
    assert not [f for f in os.listdir(run) if f.endswith(".tmp")]


def test_torchvision_cifar10_files_train_a_resnet(tmp_path):
    write_cifar10(str(tmp_path / "data"))
    out = _json(
        run_cnn(
            "train",
            "resnet20",
            "--data",
            "cifar10",
            "--data-dir",
            tmp_path / "data",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--project",
            tmp_path,
            "--json",
            "--max-steps",
            "4",
        )
    )
    ev = _json(run_cnn("eval", out["best_checkpoint"], "--data-dir", tmp_path / "data", "--json", "--split", "val"))
    assert ev["samples"] == 50 and ev["top5"] is not None and len(ev["per_class"]) == 10


def test_folder_dataset_trains(tmp_path):
    write_image_folder(str(tmp_path / "imgs"), with_val=True)
    out = _json(
        run_cnn(
            "train",
            "smallcnn",
            "--data",
            f"folder:{tmp_path / 'imgs'}",
            "--img-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--workers",
            "0",
            "--project",
            tmp_path,
            "--json",
        )
    )
    ck = torch.load(out["best_checkpoint"], weights_only=True)
    assert ck["classes"] == ["cats", "dogs"] and ck["model"]["image_size"] == [32, 32]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["train", "resnett", "--data", "lines"], "unknown model"),
        (["train", "lenet", "--data", "cifar11"], "unknown dataset"),
        (["train", "--resume", "/nonexistent/run"], "nothing to resume"),
        (["train", "lenet", "--data", "digits", "--optimizer", "adam"], "unknown optimizer"),
        (["train", "lenet", "--data", "digits", "--epochs", "0"], "--epochs"),
        (["train", "lenet"], "give a MODEL and --data"),
        (["eval", "/nonexistent.pt", "--data", "digits"], "not found"),
    ],
)
def test_bad_input_exit_2(tmp_path, args, needle):
    p = run_cnn(*args, "--project", tmp_path) if args[0] == "train" else run_cnn(*args)
    assert p.returncode == 2, p.stderr
    assert needle in p.stderr and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "train")


@pytest.mark.cuda
def test_cuda_training_picks_bf16_or_fp16_and_keeps_data_on_gpu(tmp_path):
    out = _json(
        run_cnn(
            "train",
            "smallcnn",
            "--data",
            "fake",
            "--device",
            "cuda",
            "--epochs",
            "1",
            "--max-steps",
            "20",
            "--project",
            tmp_path,
            "--json",
        )
    )
    assert out["device"].startswith("cuda") and out["precision"] in ("bf16", "16")
    ev = _json(run_cnn("eval", out["best_checkpoint"], "--device", "cuda", "--json"))
    assert ev["samples"] == 2000


def test_compile_trains_on_cpu(tmp_path):
    """--compile: torch.compile (inductor, a C++ build on the CPU) runs the training steps; the checkpoint holds the
    plain model's weights (no `_orig_mod.` prefix) and evaluates like any other."""
    out = _json(
        run_cnn(
            "train",
            "lenet5",
            "--data",
            "fake",
            "--compile",
            "--device",
            "cpu",
            "--precision",
            "32",
            "--epochs",
            "1",
            "--max-steps",
            "3",
            "--batch-size",
            "32",
            "--project",
            tmp_path,
            "--json",
        )
    )
    ck = torch.load(out["best_checkpoint"], weights_only=True)
    assert all(not k.startswith("_orig_mod.") for k in ck["state_dict"])
    ev = _json(run_cnn("eval", out["best_checkpoint"], "--json"))
    assert ev["accuracy"] == pytest.approx(out["test_accuracy"], abs=1e-9)


def test_resuming_a_finished_run_says_it_is_complete_and_changes_nothing(tmp_path):
    """`--resume` of a run with nothing left: exit 0 (a requeued job that had finished), the run said complete with
    the option that trains it longer, no file rewritten; with that option it trains on."""
    run_cnn("train", "lenet5", "--data", "fake", "--max-steps", "2", "--project", tmp_path, "--name", "r", check=0)
    run = tmp_path / "r"
    before = {f: (run / f).read_bytes() for f in os.listdir(run) if not f.startswith(".")}
    p = run_cnn("train", "--resume", run, "--json", check=0)
    assert "is complete (1 of 1 epochs are done, it stopped at --max-steps 2)" in p.stderr
    assert "--epochs N (N > 1) --max-steps N (N > 2)" in p.stderr and "images/s" not in p.stderr
    assert json.loads(p.stdout) == json.loads(before["summary.json"])
    assert {f: (run / f).read_bytes() for f in before} == before
    more = run_cnn("train", "--resume", run, "--epochs", "2", "--max-steps", "4", "--json", check=0)
    assert json.loads(more.stdout)["epochs"] == 2 and "resumed at epoch 2 step 0" in more.stderr
