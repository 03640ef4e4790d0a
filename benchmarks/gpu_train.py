"""`cnn train` on a GPU against a hand-written channels_last + bf16 loop on the same device and data.

Usage: python benchmarks/gpu_train.py [--device cuda] [--steps N] [--runs R] [--quick]

1. Throughput, same synthetic 3x32x32 data, same model, batch and precision:
   - ResNet-18 with the CIFAR stem (3x3 conv, no max-pool), batch 512;
   - LeNet-5, batch 1024.
   The reference is the plainest fast loop: data already on the GPU, channels_last, bf16 autocast (fp16 with a
   grad scaler where the GPU has no bf16), SGD, no metrics. `cnn train` runs as users run it (`--data fake`, its
   in-memory loader with augmentation, its metrics and checks). Images/s of each (median of R runs) and the ratio
   (target >= 0.95).
2. A `cnn train resnet --data cifar10`-shaped run on CIFAR-10 files in the real format (written by the test
   fixtures, 50,000 training images): epochs per second, after the first epoch (start-up and cuDNN autotuning).

`--device cpu --quick` runs the same code briefly on the CPU, to check the script itself.

Timing: `cnn train` runs 4 epochs on a larger `fake`-like set; the figure is the median of the training phases of
epochs 2-4 (each starts after the synchronised validation pass and ends with the read of the device's counters).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

REFERENCE = r"""
import sys, time, torch, torch.nn as nn
name, steps, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if name == "lenet":
    model = nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                          nn.Linear(84, 10))
else:
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
dev = torch.device(device)
cuda = dev.type == "cuda"
bf16 = torch.cuda.is_bf16_supported() if cuda else False
if cuda:
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
model = model.to(dev, memory_format=torch.channels_last)
x = torch.randn(batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (batch,), device=dev)
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
scaler = torch.amp.GradScaler(dev.type, enabled=cuda and not bf16)
lossf = nn.CrossEntropyLoss()
dtype = torch.bfloat16 if (bf16 or not cuda) else torch.float16
def step():
    with torch.autocast(dev.type, dtype=dtype, enabled=cuda or False):
        loss = lossf(model(x), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
for _ in range(10):
    step()
if cuda: torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(steps):
    step()
if cuda: torch.cuda.synchronize()
print(steps * batch / (time.perf_counter() - t))
"""

TRAINER = r"""
import json, statistics, sys
import torch
from cnncli.config import TrainConfig
from cnncli.data import register_dataset, tensor_dataset
from cnncli.engine.trainer import train
name, images, batch, device, project = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]

@register_dataset(name="bench-fake", epochs=4, batch_size=batch, mean=(0.5,) * 3, std=(0.289,) * 3)
def bench_fake(info, *, data_dir, image_size=None, download=True, arg=None):
    # `fake` with more images per epoch: random 3x32x32 uint8 in 10 classes, kept on the device by the loader
    g = torch.Generator().manual_seed(0)
    tx = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=g)
    ty = torch.randint(0, 10, (images,), generator=g)
    sx = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=g)
    sy = torch.randint(0, 10, (1000,), generator=g)
    return tensor_dataset(info, tx, ty, sx, sy, [str(i) for i in range(10)])

cfg = TrainConfig(model=name, data="bench-fake", batch_size=batch, epochs=4, device=device,
                  precision="32" if device == "cpu" else "auto", project=project, name="bench")
res = train(cfg)
# each epoch's training phase starts after a synchronised validation pass and ends with a read of the device's
# counters: its images/s is wall time over finished work. The first epoch warms up (cuDNN autotuning).
print(json.dumps({"images_per_second": statistics.median(h.images_per_second for h in res.history[1:]),
                  "precision": res.precision}))
"""


def run(code: str, *args) -> str:
    p = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
    )
    if p.returncode != 0:
        raise SystemExit(f"benchmark step failed:\n{p.stderr[-3000:]}")
    return p.stdout.strip().splitlines()[-1]


def throughput(model: str, ours: str, batch: int, steps: int, runs: int, device: str, tmp: str) -> None:
    images = steps * batch // 3  # three measured epochs of about steps/3 steps each
    ref, mine, prec = [], [], None
    for _ in range(runs):  # interleaved, so a slow moment of the machine hits both
        ref.append(float(run(REFERENCE, model, steps, batch, device)))
        out = json.loads(run(TRAINER, ours, images, batch, device, tmp))
        mine.append(out["images_per_second"])
        prec = out["precision"]
    r, m = statistics.median(ref), statistics.median(mine)
    print(
        f"{model:10s} batch {batch:5d}  reference {r:11,.0f} img/s   cnn train {m:11,.0f} img/s   "
        f"ratio {m / r:.3f} (target >= 0.95)   [cnn train precision {prec}; runs: "
        f"{', '.join(f'{a / b:.3f}' for a, b in zip(mine, ref))}]"
    )


def cifar_epochs(device: str, epochs: int, n_train: int, tmp: str) -> None:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from fixtures import write_cifar10

    data = os.path.join(tmp, "data")
    write_cifar10(data, n_train=n_train, n_test=max(n_train // 5, 100))
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "cnncli",
            "train",
            "resnet",
            "--data",
            "cifar10",
            "--data-dir",
            data,
            "--epochs",
            str(epochs),
            "--device",
            device,
            "--project",
            tmp,
            "--name",
            "cifar",
            "--json",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "CI": "1"},
    )
    if p.returncode != 0:
        raise SystemExit(f"cifar10 run failed:\n{p.stderr[-3000:]}")
    res = json.loads(p.stdout)
    with open(os.path.join(res["run_dir"], "summary.json")) as f:
        history = json.load(f)["history"]
    later = [h["seconds"] for h in history[1:]] or [history[0]["seconds"]]
    print(
        f"cnn train resnet --data cifar10 ({n_train:,} training images): "
        f"{len(later) / sum(later):.2f} epochs/s after the first epoch ({history[0]['seconds']:.1f} s), "
        f"{res['images_per_second']:,.0f} img/s, precision {res['precision']}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="a few steps, a small CIFAR set: check the script")
    a = ap.parse_args()
    import torch

    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run this on a GPU machine (or --device cpu --quick to check the script)")
    steps, runs, n_train = (40, 1, 2000) if a.quick else (a.steps, a.runs, 50_000)
    name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {steps} timed steps, median of {runs} run(s)")
    with tempfile.TemporaryDirectory() as tmp:
        throughput("resnet18c", "resnet18", 512 if not a.quick else 64, steps, runs, a.device, tmp)
        throughput("lenet", "lenet5", 1024 if not a.quick else 256, steps, runs, a.device, tmp)
        t = time.perf_counter()
        cifar_epochs(a.device, 2 if a.quick else 4, n_train, tmp)
        print(f"(cifar10 run: {time.perf_counter() - t:.0f} s in all)")


if __name__ == "__main__":
    main()
