"""Small image folders with the defaults against the best of a learning-rate sweep, from scratch and from --weights.

Usage: python benchmarks/small_folders.py [MODEL] [LRS] [FOLDERS] [SEEDS]
       (default resnet18, 0.01,0.03,0.1, colours,shapes,digits, 1)

Writes three small folders of its own making (train/ and test/, PNGs): `colours` (3 classes: the colour of a blob
on noise, 32x32), `shapes` (squares, discs and triangles in random colours, 40x40) and `digits` (scikit-learn's
8x8 digits upscaled to 32x32, 10 classes). For each folder it trains MODEL with `cnn train` (a real process, the
folder's default epochs) with no flags and with each `--lr` of the sweep; and again from `--weights`: the best.pt
of the same model trained with no flags on another folder (shapes <- colours, colours <- shapes, digits <-
shapes), as a user fine-tunes a saved model. Prints test top-1 (the test/ folder, `cnn eval`) of best.pt per run, and per
folder whether the defaults reach the best of the sweep. With SEEDS > 1 every run is repeated with --seed
0..SEEDS-1 (the --weights are seed 0's) and the cells are the mean test top-1 over the seeds (one test image is
0.8-1.1 points on these test/ folders: a single seed cannot tell such a gap from noise). A second table has
the same runs' last.pt: best.pt is chosen on 36-48 validation images, and the two can differ by several points.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

MODEL = sys.argv[1] if len(sys.argv) > 1 else "resnet18"
LRS = (sys.argv[2] if len(sys.argv) > 2 else "0.01,0.03,0.1").split(",")
FOLDERS = (sys.argv[3] if len(sys.argv) > 3 else "colours,shapes,digits").split(",")
SEEDS = int(sys.argv[4]) if len(sys.argv) > 4 else 1
SOURCE = {"shapes": "colours", "colours": "shapes", "digits": "shapes"}
CNN = [sys.executable, "-m", "cnncli"]


def _save(img: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)


def colours(root: str, n: int, seed: int, size: int = 32) -> None:
    rng = np.random.default_rng(seed)
    base = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (50, 60, 210)}
    yy, xx = np.mgrid[:size, :size]
    for cls, rgb in base.items():
        for i in range(n):
            img = rng.integers(0, 256, (size, size, 3)).astype(np.float32) * 0.5
            r = rng.integers(size // 6, size // 3)
            cy, cx = rng.integers(r, size - r, 2)
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            img[mask] = np.clip(np.array(rgb) + rng.normal(0, 25, 3), 0, 255)
            _save(img.astype(np.uint8), os.path.join(root, cls, f"{i}.png"))


def shapes(root: str, n: int, seed: int, size: int = 40) -> None:
    """benchmarks/deploy.py's shapes (squares, discs, triangles in random colours on noise), at 40x40."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    argv, sys.argv = sys.argv, sys.argv[:1]  # deploy.py reads its own arguments when it is imported
    try:
        from deploy import shapes as deploy_shapes
    finally:
        sys.argv = argv

    deploy_shapes(root, n, seed, size)


def digits(root: str, n: int, seed: int) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(seed)
    for label in range(10):
        idx = np.flatnonzero(d.target == label)
        pick = rng.choice(idx, size=n, replace=False)
        for i, j in enumerate(pick):
            img = Image.fromarray((d.images[j] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            _save(np.stack([np.asarray(img)] * 3, -1), os.path.join(root, str(label), f"{i}.png"))


def write(name: str, root: str) -> str:
    path = os.path.join(root, name)
    make, (n_train, n_test) = {
        "colours": (colours, (60, 30)),
        "shapes": (shapes, (80, 40)),
        "digits": (digits, (24, 12)),
    }[name]
    if name == "digits":  # disjoint images for train and test
        from sklearn.datasets import load_digits  # noqa: F401

        digits(os.path.join(path, "train"), n_train, seed=0)
        _digits_test(os.path.join(path, "test"), n_train, n_test)
    else:
        make(os.path.join(path, "train"), n_train, seed=0)
        make(os.path.join(path, "test"), n_test, seed=1)
    return path


def _digits_test(root: str, skip: int, n: int) -> None:
    """Test digits that are not among the training ones (the same seeded choice, the next images)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    for label in range(10):
        idx = np.flatnonzero(d.target == label)
        order = rng.choice(idx, size=len(idx), replace=False)
        for i, j in enumerate(order[skip : skip + n]):
            img = Image.fromarray((d.images[j] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR)
            _save(np.stack([np.asarray(img)] * 3, -1), os.path.join(root, str(label), f"{i}.png"))


def train(folder: str, project: str, name: str, *extra: str) -> dict:
    args = [*CNN, "train", MODEL, "--data", f"folder:{folder}", "--project", project, "--name", name, "--json", *extra]
    t0 = time.perf_counter()
    p = subprocess.run(args, capture_output=True, text=True)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    out = json.loads(p.stdout)
    acc = test_accuracy(out["best_checkpoint"], folder)
    last = test_accuracy(os.path.join(out["run_dir"], "last.pt"), folder)  # the annealed last epoch, for comparison
    log = p.stderr
    print(f"  {name}: {acc:.2%} (last.pt {last:.2%}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {
        "accuracy": acc,
        "last": last,
        "seconds": time.perf_counter() - t0,
        "best": out["best_checkpoint"],
        "log": log,
    }


def test_accuracy(checkpoint: str, folder: str) -> float:
    """Top-1 on the folder's test/ split, by `cnn eval` (nan when it fails)."""
    ev = subprocess.run(
        [*CNN, "eval", checkpoint, "--data", f"folder:{folder}", "--json"], capture_output=True, text=True
    )
    return json.loads(ev.stdout)["accuracy"] if ev.returncode == 0 else float("nan")


def seeded(folder: str, project: str, name: str, *extra: str) -> dict:
    """`train` once per seed: the mean accuracy, seed 0's checkpoint and log."""
    runs = [train(folder, project, f"{name}-s{s}", "--seed", str(s), *extra) for s in range(SEEDS)]
    if any("error" in r for r in runs):
        return next(r for r in runs if "error" in r)
    accs = [r["accuracy"] for r in runs]
    lasts = [r["last"] for r in runs]
    return {**runs[0], "accuracy": sum(accs) / len(accs), "accuracies": accs, "last": sum(lasts) / len(lasts)}


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="cnn-small-")
    folders = {n: write(n, tmp) for n in dict.fromkeys([*FOLDERS, *(SOURCE[f] for f in FOLDERS)])}
    results: dict[tuple[str, str, str], dict] = {}
    defaults: dict[str, dict] = {}
    for name in folders:  # the defaults first: their best.pt are the --weights of the fine-tuning runs
        run = seeded if name in FOLDERS else train  # a source only for --weights: seed 0
        defaults[name] = run(folders[name], tmp, f"{name}-default")
    for name in FOLDERS:
        results[(name, "scratch", "default")] = defaults[name]
        for lr in LRS:
            results[(name, "scratch", lr)] = seeded(folders[name], tmp, f"{name}-lr{lr}", "--lr", lr)
        weights = defaults[SOURCE[name]].get("best")
        if weights is None:
            continue
        results[(name, "weights", "default")] = seeded(folders[name], tmp, f"{name}-w-default", "--weights", weights)
        for lr in LRS:
            results[(name, "weights", lr)] = seeded(
                folders[name], tmp, f"{name}-w-lr{lr}", "--weights", weights, "--lr", lr
            )
    seeds = f", mean of seeds 0-{SEEDS - 1}" if SEEDS > 1 else ""
    print(f"\n{MODEL}, test top-1 (cnn eval on test/), folder default epochs{seeds}; load {os.getloadavg()[0]:.1f}")
    print(
        f"{'folder':8} {'start':8} "
        + " ".join(f"{c:>9}" for c in ["default", *(f"lr {lr}" for lr in LRS)])
        + "  defaults"
    )
    for name in FOLDERS:
        for start in ("scratch", "weights"):
            runs = [results.get((name, start, k), {}) for k in ["default", *LRS]]
            if not runs[0]:
                continue
            accs = [r.get("accuracy", float("nan")) for r in runs]
            best = max(a for a in accs[1:] if a == a) if any(a == a for a in accs[1:]) else float("nan")
            verdict = "reach the best" if accs[0] >= best - 1e-9 else f"{(best - accs[0]) * 100:.1f} points below"
            cells = " ".join(f"{a:9.2%}" if a == a else f"{'error':>9}" for a in accs)
            print(f"{name:8} {start:8} {cells}  {verdict}")
            if SEEDS > 1:
                per = "  ".join(
                    f"{k}: {[f'{a:.2%}' for a in r.get('accuracies', [])]}" for k, r in zip(["default", *LRS], runs)
                )
                print(f"{'':17} per seed {per}")
    print(f"\nthe same runs' last.pt (the last epoch), test top-1{seeds}:")
    for name in FOLDERS:
        for start in ("scratch", "weights"):
            runs = [results.get((name, start, k), {}) for k in ["default", *LRS]]
            if runs[0]:
                print(f"{name:8} {start:8} " + " ".join(f"{r.get('last', float('nan')):9.2%}" for r in runs))
    chosen = {n: [line for line in r.get("log", "").splitlines() if "lr" in line][:2] for n, r in defaults.items()}
    print("\nwhat the defaults chose (train's log):")
    for n, lines in chosen.items():
        for line in lines:
            print(f"  {n}: {line.strip()}")


if __name__ == "__main__":
    main()
