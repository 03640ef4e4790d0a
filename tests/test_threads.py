"""The CPU thread policy (cnncli/engine/threads.py): cores from the affinity mask and the cgroup quota, a share per
torchrun rank, the free cores on a busy machine, the options that override it, and what a run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cnn

from cnncli.engine import threads


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.delenv("CNN_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)


def test_an_idle_machine_gives_the_model_every_core(eight_cores):
    p = threads.plan(load=0.1)
    assert (p.intra, p.workers, p.busy) == (8, 0, 0)
    folder = threads.plan(load=0.0, streams_files=True)  # image files to decode: half the cores decode
    assert (folder.intra, folder.workers) == (4, 4) and folder.intra + folder.workers == 8


def test_busy_cores_are_left_to_their_work(eight_cores):
    p = threads.plan(load=2.7)  # other processes keep almost 3 cores busy
    assert (p.intra, p.busy) == (5, 3) and "3 busy" in p.describe()
    assert threads.plan(load=50.0).intra == 1  # never fewer than one thread


def test_each_torchrun_rank_gets_its_share(eight_cores, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    p = threads.plan(load=0.0, streams_files=True)
    assert p.cores == 2 and p.intra + p.workers == 2
    q = threads.plan(load=5.0)  # the other ranks starting up are not contention: no sample, the whole share
    assert (q.intra, q.busy) == (2, 0)


def test_threads_given_win_over_the_load_and_deterministic_ignores_it(eight_cores, monkeypatch):
    assert threads.plan(3, load=7.0).intra == 3
    monkeypatch.setenv("CNN_THREADS", "2")
    p = threads.plan(load=7.0)
    assert (p.intra, p.chosen_by) == (2, "CNN_THREADS")
    monkeypatch.delenv("CNN_THREADS")
    d = threads.plan(load=7.0, deterministic=True)
    assert (d.intra, d.chosen_by) == (8, "--deterministic")  # the same threads every time, whatever the load


def test_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    v2 = tmp_path / "cpu.max"
    monkeypatch.setattr(threads, "CGROUP_V2", str(v2))
    monkeypatch.setattr(threads, "CGROUP_V1", (str(tmp_path / "q"), str(tmp_path / "p")))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert threads.usable_cores() == 16  # no quota file at all
    v2.write_text("150000 100000\n")  # 1.5 CPUs: 2 cores may be used
    assert threads.usable_cores() == 2
    v2.write_text("max 100000\n")
    assert threads.usable_cores() == 16
    v2.unlink()
    (tmp_path / "q").write_text("300000\n")
    (tmp_path / "p").write_text("100000\n")
    assert threads.usable_cores() == 3


def test_a_busy_process_is_seen():
    """A pure-Python loop on one of this process's cores reads as about one core of other load."""
    code = "import time\nt = time.time()\nwhile time.time() - t < 5: pass"
    busy = subprocess.Popen([sys.executable, "-c", code])
    try:
        import time

        time.sleep(0.3)
        load = threads.other_load(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert load >= 0.6, load


def test_the_wait_policy_is_passive_only_on_a_busy_machine():
    script = (
        "import os, sys\nfrom cnncli.engine.threads import prepare_environment\n"
        "prepare_environment('train')\nprint(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('CNN_CPU_LOAD'))"
    )

    def policy(env=None):
        e = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
        e.update(env or {})
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=e, cwd=ROOT)
        return out.stdout.split()

    code = "import time\nt = time.time()\nwhile time.time() - t < 8: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(len(os.sched_getaffinity(0)))]
    try:
        busy = policy()
        mine = policy({"OMP_WAIT_POLICY": "ACTIVE"})
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert busy[0] == "PASSIVE" and float(busy[1]) >= 0.6, busy
    assert mine[0] == "ACTIVE"  # the user's own policy wins


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_thread_counts_are_exit_2(value, tmp_path):
    p = run_cnn("train", "linenet", "--data", "lines", "--threads", value, "--project", tmp_path)
    assert p.returncode == 2 and p.stderr.startswith("error:") and len(p.stderr.splitlines()) == 1, p.stderr
    q = run_cnn("train", "linenet", "--data", "lines", "--project", tmp_path, env={"CNN_THREADS": value})
    assert q.returncode == 2 and "CNN_THREADS" in q.stderr and len(q.stderr.splitlines()) == 1, q.stderr
    assert not (tmp_path / "train").exists()  # nothing was run


def test_a_run_says_and_saves_its_threads_and_a_resume_keeps_them(tmp_path):
    p = run_cnn(
        "train", "linenet", "--data", "lines", "--epochs", "1", "--max-steps", "3", "--threads", "1",
        "--device", "cpu", "--project", tmp_path, "--name", "t", check=0,
    )  # fmt: skip
    assert "device cpu (1 thread (--threads) on " in p.stderr
    args = json.loads((tmp_path / "t" / "args.json").read_text())
    assert args["threads"] == 1
    q = run_cnn("train", "--resume", tmp_path / "t", "--epochs", "2", "--max-steps", "6", check=0)
    assert "1 thread (as saved)" in q.stderr and json.loads((tmp_path / "t" / "args.json").read_text())["threads"] == 1


def test_the_data_workers_do_not_change_what_a_run_learns(tmp_path):
    """A sample's crop and flip come from its own seed (seed, epoch, index), not from whichever process decoded
    it: the policy may choose 0 or 2 workers, and the trained weights are the same bit for bit."""
    import torch
    from fixtures import write_image_folder

    root = write_image_folder(str(tmp_path / "imgs"), classes=("a", "b"), per_class=8, size=(20, 24))
    weights = []
    for w in ("0", "2"):
        run_cnn(
            "train", "smallcnn", "--data", f"folder:{root}", "--epochs", "2", "--workers", w, "--threads", "2", "--cache", "none",
            "--device", "cpu", "--project", tmp_path / "runs", "--name", f"w{w}", check=0,
        )  # fmt: skip
        weights.append(torch.load(tmp_path / "runs" / f"w{w}" / "last.pt", weights_only=True)["state_dict"])
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
