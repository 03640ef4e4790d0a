"""Training throughput on a CPU that is busy with other work, for cnn's thread policy (engine/threads.py).

Usage: python benchmarks/cpu_contention.py [REPEATS] [TASKS]      (default 3, lines,digits,folder)

Three tasks, each trained by `python -m cnncli train ... --json` (a real process, as a user runs it): the line
detector (linenet on lines), LeNet on digits, and smallcnn on a folder of 32x32 PNG shapes written here. Each runs
(a) on an idle machine and (b) with one competing busy process per core (pure-Python loops, bounded in time, on
this machine only), with:
  - `policy`: cnn's defaults (the thread policy);
  - `before`: the defaults before the policy, emulated (torch's threads = the cores, DataLoader workers = the
    cores, libgomp's spinning idle threads: GOMP_SPINCOUNT set so that the passive wait policy is not applied);
  - `tN wM`: the hand settings swept (`--threads N --workers M`, M only for the folder task).
Runs are interleaved (every setting once per round, rounds repeated); the figure is the median training images/s
of the run (`images_per_second`, after setup). Printed: per task and condition, each setting's median, the best
hand setting, and the ratios best/policy (the policy is within 1.3x of the best when <= 1.3) and policy/before.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPEATS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
TASKS = (sys.argv[2] if len(sys.argv) > 2 else "lines,digits,folder").split(",")
CORES = len(os.sched_getaffinity(0))


def shapes_folder(root: str, per_class: int = 160) -> str:
    """A folder of 32x32 PNGs, squares vs discs, in colour."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    for cls in ("squares", "discs"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            cy, cx, r = rng.integers(10, 22, 2).tolist() + [int(rng.integers(4, 9))]
            mask = (
                (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
                if cls == "squares"
                else (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            )
            img[mask] = rng.integers(120, 256, 3)
            Image.fromarray(img).save(os.path.join(root, cls, f"{i}.png"))
    return root


def task_args(task: str, folder: str) -> list[str]:
    return {
        "lines": ["linenet", "--data", "lines", "--epochs", "1", "--max-steps", "150"],
        "digits": ["lenet5", "--data", "digits", "--epochs", "6"],
        "folder": ["smallcnn", "--data", f"folder:{folder}", "--epochs", "3"],
    }[task]


def settings(task: str) -> dict[str, tuple[list[str], dict]]:
    before_workers = min(8, CORES)
    out = {
        "policy": ([], {}),
        "before": (["--threads", str(CORES), "--workers", str(before_workers)], {"GOMP_SPINCOUNT": "300000"}),
    }
    for t in sorted({1, CORES}):
        for w in (0, 1, CORES) if task == "folder" else (None,):
            name = f"t{t}" + (f" w{w}" if w is not None else "")
            out[name] = (["--threads", str(t)] + (["--workers", str(w)] if w is not None else []), {})
    return out


def run(task: str, extra: list[str], env: dict, folder: str, project: str) -> float:
    e = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "CNN_THREADS")}
    e.update(env)
    argv = [sys.executable, "-m", "cnncli", "train", *task_args(task, folder), "--device", "cpu", "--json"]
    argv += ["--project", project, "--name", "r", *extra]
    p = subprocess.run(argv, capture_output=True, text=True, env=e, timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}\n{p.stderr[-2000:]}")
    return float(json.loads(p.stdout)["images_per_second"])


class Busy:
    """One busy pure-Python process per core for the duration of a `with` block (at most `limit` seconds)."""

    def __init__(self, limit: float = 600):
        self.limit = limit

    def __enter__(self):
        code = f"import time\nt = time.time()\nwhile time.time() - t < {self.limit}: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(CORES)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
            p.wait()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = shapes_folder(os.path.join(tmp, "shapes"))
        results: dict = {}
        for rnd in range(REPEATS):
            for condition in ("idle", "busy"):
                for task in TASKS:
                    for name, (extra, env) in settings(task).items():
                        if condition == "busy":
                            with Busy():
                                v = run(task, extra, env, folder, os.path.join(tmp, "runs"))
                        else:
                            v = run(task, extra, env, folder, os.path.join(tmp, "runs"))
                        results.setdefault((task, condition), {}).setdefault(name, []).append(v)
                        print(f"round {rnd + 1} {condition:4} {task:6} {name:8} {v:8.0f} img/s", file=sys.stderr)
        print(f"\n{CORES} cores, medians of {REPEATS} interleaved runs (images/s while training)")
        for (task, condition), by in results.items():
            med = {k: statistics.median(v) for k, v in by.items()}
            hand = {k: v for k, v in med.items() if k not in ("policy", "before")}
            best = max(hand, key=hand.get)
            print(
                f"{task:6} {condition:4}  policy {med['policy']:7.0f}  before {med['before']:7.0f}  best {best} "
                f"{hand[best]:7.0f}  best/policy {hand[best] / med['policy']:.2f}  "
                f"policy/before {med['policy'] / med['before']:.2f}   "
                + "  ".join(f"{k} {v:.0f}" for k, v in med.items())
            )


if __name__ == "__main__":
    main()
