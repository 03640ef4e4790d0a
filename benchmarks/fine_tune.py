"""Does the fine-tuning recipe pay off on a small folder of one's own? Test accuracy of `cnn train` recipes on the
same folder, the same epochs, seeds 0..SEEDS-1.

Usage: python benchmarks/fine_tune.py [SEEDS] [EPOCHS] [PER_CLASS]   (default 3 40 20)

The images are real: scikit-learn's handwritten digits (1,797 scans of 8x8, shipped with scikit-learn), written as
32x32 grey PNGs. The target task is the digits 5-9 as a folder a user would have: PER_CLASS images per class in
train/, 10 in val/, all the rest (about 800) in test/. The source task, for the checkpoint, is the digits 0-4
(every image of them, about 900): other classes of the same kind of image, as published weights are for a user.

Recipes on the target folder (resnet20, batch 16, --precision 32, cnn's defaults otherwise):
  plain       cnn train resnet20 --data folder:T                      (the defaults: crop + flip)
  recipe      ... --augment trivial --mixup 0.2 --ema
  frozen      ... --weights SOURCE/best.pt --freeze backbone           (only the re-made head trains)
  fine-tuned  ... --weights SOURCE/best.pt                             (every layer from the checkpoint)
The figure is `cnn eval best.pt --split test` (accuracy on the ~800 test images), mean and spread over the seeds.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SEEDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 40
PER_CLASS = int(sys.argv[3]) if len(sys.argv) > 3 else 20
CNN = [sys.executable, "-m", "cnncli"]
RECIPES = {
    "plain": [],
    "recipe": ["--augment", "trivial", "--mixup", "0.2", "--ema"],
    "frozen": ["--weights", "{source}", "--freeze", "backbone"],
    "fine-tuned": ["--weights", "{source}"],
}


def write_digits(root: str) -> tuple[str, str]:
    """(the source folder: digits 0-4, the target folder: digits 5-9 split train/val/test) as 32x32 PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    rng = np.random.default_rng(0)
    source, target = os.path.join(root, "source"), os.path.join(root, "target")
    for label in range(10):
        idx = rng.permutation(np.flatnonzero(d.target == label))
        if label < 5:
            places = [(os.path.join(source, "train"), idx[:-10]), (os.path.join(source, "val"), idx[-10:])]
        else:
            t = os.path.join(target, "{}")
            places = [
                (t.format("train"), idx[:PER_CLASS]),
                (t.format("val"), idx[PER_CLASS : PER_CLASS + 10]),
                (t.format("test"), idx[PER_CLASS + 10 :]),
            ]
        for folder, chosen in places:
            os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
            for i in chosen:
                pixels = (d.images[i] * (255 / 16)).astype(np.uint8)
                img = Image.fromarray(pixels, "L").resize((32, 32), Image.BILINEAR)
                img.save(os.path.join(folder, str(label), f"{i}.png"))
    return source, target


def cnn(*args: str) -> dict:
    p = subprocess.run([*CNN, *args, "--json"], capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"cnn {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(p.stdout)


def main() -> None:
    work = tempfile.mkdtemp(prefix="fine_tune_")
    source, target = write_digits(work)
    common = ["--batch-size", "16", "--precision", "32", "--project", os.path.join(work, "runs")]
    t0 = time.perf_counter()
    src = cnn("train", "resnet20", "--data", f"folder:{source}", "--epochs", "15", "--name", "source", *common)
    print(f"source checkpoint (digits 0-4, 15 epochs): val {src['best_accuracy']:.2%}, {time.perf_counter() - t0:.0f}s")
    results: dict[str, list[float]] = {name: [] for name in RECIPES}
    for seed in range(SEEDS):
        for name, extra in RECIPES.items():
            args = [a.replace("{source}", src["best_checkpoint"]) for a in extra]
            run = f"{name}-{seed}"
            t = time.perf_counter()
            r = cnn("train", "resnet20", "--data", f"folder:{target}", "--epochs", str(EPOCHS), "--seed", str(seed),
                    "--name", run, *common, *args)  # fmt: skip
            ev = cnn("eval", r["best_checkpoint"], "--data", f"folder:{target}", "--split", "test")
            results[name].append(ev["accuracy"])
            print(f"  seed {seed} {name:<10} test {ev['accuracy']:.2%}  ({time.perf_counter() - t:.0f}s)", flush=True)
    n_test = sum(len(os.listdir(os.path.join(target, "test", c))) for c in os.listdir(os.path.join(target, "test")))
    print(f"\ntarget: digits 5-9, {PER_CLASS}/class train, {n_test} test images, {EPOCHS} epochs, seeds 0-{SEEDS - 1}")
    for name, accs in results.items():
        spread = statistics.stdev(accs) if len(accs) > 1 else 0.0
        cmd = " ".join(RECIPES[name]).replace("{source}", "SOURCE/best.pt")
        print(f"  {name:<10} {statistics.mean(accs):.2%} +- {spread:.2%}  {[f'{a:.2%}' for a in accs]}  {cmd}")
    print(f"({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; work folder {work})")


if __name__ == "__main__":
    main()
