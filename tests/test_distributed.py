"""`cnn train` under the real torchrun: 2-process gloo DDP jobs on CPU, launched as two nodes meeting at a rendezvous
(the reference run) and as one node of two processes (the interrupted and resumed run, which must equal it)."""

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

# one thread per rank however the job is launched, so that two launches of the same job compute the same sums
ARGS = [
    "linenet",
    "--data",
    "lines",
    "--epochs",
    "2",
    "--deterministic",
    "--device",
    "cpu",
    "--precision",
    "32",
    "--threads",
    "1",
]


def _launch(launcher: list[str], *args) -> subprocess.Popen:
    """`python -m torch.distributed.run LAUNCHER... -m cnncli train ARGS`, in its own session (to signal the job)."""
    # each rank takes its share of the cores from the thread policy (the suite's CNN_THREADS would oversubscribe)
    env = {k: v for k, v in os.environ.items() if k != "CNN_THREADS"}
    env.update({"CI": "1", "OMP_NUM_THREADS": "1", "CNN_DIST_TIMEOUT": "120"})
    cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "cnncli", "train", *map(str, args)]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )


def _torchrun(*args) -> subprocess.Popen:
    """One node of two processes."""
    return _launch(["--standalone", "--nproc-per-node", "2"], *args)


def _rows(run):
    with open(os.path.join(run, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node(node: int, port: int, *args) -> subprocess.Popen:
    """One "node" of a two-machine job: its own torchrun launcher with one process, meeting the other at a c10d
    rendezvous on localhost, node 0 hosting its store, as they would across machines (docs/distributed.md)."""
    rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "cnn-two-nodes"]
    host = ["--rdzv-conf", f"is_host={1 if node == 0 else 0}"]
    return _launch(["--nnodes", "2", "--nproc-per-node", "1", *rendezvous, *host], *args)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The reference job: two nodes of one process each (the standalone launch of two processes on one node is
    test_resume_under_torchrun's, whose result must equal this one's: the same two ranks, however launched)."""
    project = tmp_path_factory.mktemp("ddp")
    port = _free_port()
    procs = [_node(node, port, *ARGS, "--project", project, "--name", "ddp", "--json") for node in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=400))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    printed = [json.loads(out) for out, _ in outs if out.strip()]
    assert len(printed) == 1  # rank 0 reports; the other node trains silently
    return printed[0], project, outs[0][1] + outs[1][1]


def test_two_rank_job_writes_one_run_and_matches_single_process(ddp_run, tmp_path):
    res, project, err = ddp_run
    assert os.listdir(project) == ["ddp"]  # one run folder, written by rank 0 only
    run = res["run_dir"]
    assert sorted(f for f in os.listdir(run) if not f.startswith(".")) == [
        "args.json",
        "best.pt",
        "curves.png",
        "last.pt",
        "metrics.csv",
        "summary.json",
    ]
    assert len(_rows(run)) == 2
    assert "global batch 64 split across 2 ranks: 32 per rank" in err  # (either node may say it)
    assert err.count("epoch 1/2") == 1  # only rank 0 reports
    assert res["test_accuracy"] >= 0.99
    # the same global batch in one process (on both cores): comparable accuracy, (nearly) the same weights
    single = json.loads(
        run_cnn("train", *ARGS[:-2], "--project", tmp_path, "--name", "single", "--json", check=0).stdout
    )
    assert abs(single["test_accuracy"] - res["test_accuracy"]) <= 0.005
    a = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    b = torch.load(os.path.join(single["run_dir"], "last.pt"), weights_only=True)
    assert list(a["state_dict"]) == list(b["state_dict"])  # the plain model, no `module.` prefix
    for k in a["state_dict"]:  # same batches and gradients; only the float summation order differs
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0.05, atol=2e-3)
    # every other command reads the DDP checkpoint unchanged
    ev = json.loads(run_cnn("eval", res["best_checkpoint"], "--json", check=0).stdout)
    assert ev["accuracy"] == pytest.approx(res["test_accuracy"], abs=1e-9)


def test_resume_under_torchrun(ddp_run, tmp_path):
    res, _, _ = ddp_run
    p = _torchrun(*ARGS, "--project", tmp_path, "--name", "r")
    run = os.path.join(tmp_path, "r")
    deadline = time.time() + 300
    while not os.path.exists(os.path.join(run, "metrics.csv")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert p.poll() is None, "the job finished before it could be stopped"
    time.sleep(0.5)
    os.killpg(p.pid, signal.SIGTERM)  # as a scheduler would: every process of the job gets SIGTERM
    _, err = p.communicate(timeout=200)
    assert p.returncode != 0
    ck = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    assert ck["epoch"] >= 1 or ck["step_in_epoch"] > 0
    q = _torchrun("--resume", run, "--json")
    out, err = q.communicate(timeout=400)
    assert q.returncode == 0, err
    done = json.loads(out)
    assert done["run_dir"] == os.path.abspath(run) and len(_rows(run)) == 2
    a = torch.load(os.path.join(run, "last.pt"), weights_only=True)
    b = torch.load(os.path.join(res["run_dir"], "last.pt"), weights_only=True)
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=1e-4, atol=1e-5)


FAILING_MODEL = """
import os
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=2, in_channels=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, 4, 3)
        self.fc = nn.Linear(4, num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if os.environ.get("RANK") == "1" and self.training and self.calls > 5:
            raise RuntimeError("rank 1 lost its device")
        return self.fc(self.conv(x).mean((2, 3)))
"""


def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path):
    model = tmp_path / "failing.py"
    model.write_text(FAILING_MODEL)
    t = time.time()
    p = _torchrun(f"{model}:Net", "--data", "lines", "--epochs", "1", "--device", "cpu", "--project", tmp_path)
    _, err = p.communicate(timeout=300)
    assert p.returncode != 0
    assert "rank 1 lost its device" in err
    assert time.time() - t < 200  # ended by torchrun, well before any collective timeout
    assert not os.path.exists(os.path.join(tmp_path, "train", "last.pt"))  # nothing half-written
