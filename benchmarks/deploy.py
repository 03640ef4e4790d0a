"""int8 and fp16 ONNX files against the fp32 one: speed in ONNX Runtime, size, accuracy; and `cnn benchmark`'s own
figures against a plain onnxruntime loop and against `cnn eval`.

Usage: python benchmarks/deploy.py [ROUNDS] [EPOCHS]      (default 5 rounds, 12 epochs; about 4 minutes)

1. Writes a folder task (train/ and test/, 3 classes of coloured shapes on noise, 96x96 PNGs) and trains
   tv:resnet18 on it at 3x96x96 with `cnn train --lr 0.01` (a real process; the default 0.1 diverges at batch 32
   on 450 images, issue #27).
2. `cnn export best.pt --onnx`, `--onnx --int8 --data folder:...` and `--onnx --fp16 --data folder:...`.
3. A plain onnxruntime loop (the same session options cnn uses: intra-op threads = the cores, one inter-op
   thread), interleaved: every round times each file at batch 1 and 8 (warm-up, then 1 s of calls), rounds
   repeated; the figure per file and batch is the median over rounds of the per-round median latency.
4. `cnn eval` on each file, and in three of the rounds `cnn benchmark --formats onnx,onnx-int8,onnx-fp16 --json`
   on best.pt (files kept: the plain loop times the same files right after it).
Prints the ratios the issue asks for: int8 speed-up over fp32 at batch 1 and 8 (>= 1.5x), size ratio (>= 3x),
top-1 drop (<= 1 point); and cnn benchmark's p50 over the plain loop's (within 10%) and its accuracy against
cnn eval's (equal).
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

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 5
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 12
CORES = len(os.sched_getaffinity(0))
CNN = [sys.executable, "-m", "cnncli"]


def shapes(root: str, per_class: int, seed: int, size: int = 96) -> None:
    """Squares, discs and triangles, each in a random colour at a random place, on coloured noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for cls in ("squares", "discs", "triangles"):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
            r = int(rng.integers(size // 8, size // 4))
            cy, cx = rng.integers(r + 2, size - r - 2, 2).tolist()
            if cls == "squares":
                mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            elif cls == "discs":
                mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            else:
                mask = (yy - cy <= r) & (yy - cy >= -r) & (abs(xx - cx) * 2 <= (yy - cy + r))
            img[mask] = rng.integers(110, 256, 3)
            Image.fromarray(img).save(os.path.join(root, cls, f"{i}.png"))


def cnn(*args: str) -> str:
    out = subprocess.run([*CNN, *args], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"cnn {' '.join(args)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return out.stdout


def plain_latency(path: str, batch: int, seconds: float = 1.0) -> float:
    """What a user's own onnxruntime script measures: median seconds per sess.run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = CORES, 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    x = np.random.default_rng(0).standard_normal((batch, 3, 96, 96)).astype(np.float32)
    for _ in range(5):
        sess.run(None, {name: x})
    times, start = [], time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        sess.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from cnncli.engine.threads import other_load

    busy = other_load(1.0)
    tmp = tempfile.mkdtemp(prefix="cnn-deploy-")
    data = os.path.join(tmp, "shapes")
    shapes(os.path.join(data, "train"), 150, seed=0)
    shapes(os.path.join(data, "test"), 60, seed=1)
    t0 = time.perf_counter()
    args = ["tv:resnet18", "--data", f"folder:{data}", "--img-size", "96", "--epochs", str(EPOCHS), "--lr", "0.01"]
    cnn("train", *args, "--project", tmp, "--name", "r18", "--json")
    print(f"trained tv:resnet18 at 3x96x96 for {EPOCHS} epochs in {time.perf_counter() - t0:.0f} s")
    best = os.path.join(tmp, "r18", "best.pt")
    files = {"fp32": os.path.join(tmp, "r18", "best.onnx")}
    cnn("export", best, "--onnx")
    for p in ("int8", "fp16"):
        print(cnn("export", best, "--onnx", f"--{p}", "--data", f"folder:{data}").strip())
        files[p] = os.path.join(tmp, "r18", f"best-{p}.onnx")
    acc = {p: json.loads(cnn("eval", f, "--data", f"folder:{data}", "--json"))["accuracy"] for p, f in files.items()}
    size = {p: os.path.getsize(f) for p, f in files.items()}

    # interleaved rounds: the plain loop on every file at batch 1 and 8, then one `cnn benchmark` of best.pt (its
    # own files kept, so the plain loop also times exactly the files cnn benchmark timed)
    names = {"onnx": "fp32", "onnx-int8": "int8", "onnx-fp16": "fp16"}
    kept = {"fp32": "model.onnx", "int8": "model-int8.onnx", "fp16": "model-fp16.onnx"}
    lat: dict[tuple[str, int], list[float]] = {}
    own: dict[tuple[str, int], list[float]] = {}
    bench: dict[tuple[str, int], list[float]] = {}
    bench_acc: dict[str, float] = {}
    for i in range(ROUNDS):
        for batch in (1, 8):
            for p, f in files.items():
                lat.setdefault((p, batch), []).append(plain_latency(f, batch))
        if i >= 3:  # three cnn benchmark runs are enough for its median
            continue
        keep = os.path.join(tmp, f"bench{i}")
        rows = json.loads(
            cnn(
                "benchmark",
                best,
                "--data",
                f"folder:{data}",
                "--formats",
                ",".join(names),
                "--batch-sizes",
                "1,8",
                "--threads",
                str(CORES),
                "--keep",
                keep,
                "--json",
            )
        )["rows"]
        for r in rows:
            p = names[r["format"]]
            bench.setdefault((p, r["batch_size"]), []).append(r["latency_ms_p50"] / 1e3)
            bench_acc[p] = r["accuracy"]
            own.setdefault((p, r["batch_size"]), []).append(plain_latency(os.path.join(keep, kept[p]), r["batch_size"]))
    med = {k: statistics.median(v) for k, v in lat.items()}

    print(f"\n{'file':6} {'size MB':>8} {'top-1':>8} {'b1 ms':>8} {'b8 ms':>8}   (ONNX Runtime, {CORES} threads)")
    for p in files:
        print(f"{p:6} {size[p] / 1e6:8.2f} {acc[p]:8.2%} {med[(p, 1)] * 1e3:8.2f} {med[(p, 8)] * 1e3:8.2f}")
    print(
        f"\nint8 speed-up over fp32 (plain onnxruntime loop): batch 1 {med[('fp32', 1)] / med[('int8', 1)]:.2f}x, "
        f"batch 8 {med[('fp32', 8)] / med[('int8', 8)]:.2f}x   (target >= 1.5x)"
    )
    print(f"int8 size: {size['fp32'] / size['int8']:.2f}x smaller (target >= 3x)")
    print(
        f"int8 top-1 drop: {(acc['fp32'] - acc['int8']) * 100:.2f} points (target <= 1); "
        f"fp16 {(acc['fp32'] - acc['fp16']) * 100:.2f}"
    )
    print(
        "\ncnn benchmark (median p50 of 3 runs) against the plain loop on the same files, and its accuracy "
        "against cnn eval:"
    )
    for key in sorted(bench):
        p, b = key
        ratio = statistics.median(bench[key]) / statistics.median(own[key])
        same = "equal" if abs(bench_acc[p] - acc[p]) < 1e-12 else f"DIFFERS ({bench_acc[p]:.4f} vs {acc[p]:.4f})"
        print(f"  {p:5} batch {b}: p50 {ratio:.2f}x the plain loop's; accuracy {same}")
    print(
        f"\n(other work kept {busy:.2f} of {CORES} cores busy before the run"
        + ("; figures from a busy machine)" if busy > 0.3 else ")")
    )


if __name__ == "__main__":
    main()
