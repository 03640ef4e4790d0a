"""A folder of camera JPEGs: `cnn train` (defaults, and --cache ram/none) against the loader tutorials and timm amount
to, per epoch after the first; the machine's decode ceilings; predict and eval against a per-image PIL loop.

Usage: python benchmarks/camera_folder.py [ROUNDS] [EPOCHS] [PER_CLASS]   (default 3 4 60)

Writes PER_CLASS camera-sized JPEGs per class (2048x1536, quality 90; 3 classes: the colour of a large disc at a
random place on smooth coloured noise with per-pixel sensor noise, as photos of three coloured objects would be) in train/, a fifth as many in
val/ and in test/ (so both sides train on the same train/ images each epoch). Then, ROUNDS times, interleaved:
  A  the reference (a real process): torchvision ImageFolder + RandomResizedCrop(128) + RandomHorizontalFlip +
     ToTensor + Normalize, DataLoader(batch 32, shuffle, 2 workers), torchvision resnet18, SGD (Nesterov, momentum
     0.9, weight decay 5e-4) with one-cycle at cnn's learning rate, fp32;
  B  cnn train tv:resnet18 --data folder:... --img-size 128 --batch-size 32 --precision 32 (its defaults otherwise);
  C  the same with --cache none (decoding every epoch, at the JPEG scale that covers 128 px);
  D  the same with --cache ram (what the defaults choose when the decoded images fit in memory, as here);
  E  B without --precision 32: the real defaults (bf16 autocast on a CPU with AVX-512 BF16 or AMX, else fp32);
each for EPOCHS epochs; the figure is the median training-pass time of the epochs after the first, and each side's
test top-1 after its last epoch. Prints medians over the rounds and the ratios A/B, A/C, A/D.
Decode ceilings: full decode vs decoding at the smallest scale covering 128 px, images/s on one core.
Predict/eval: `cnn predict` on every photo and `cnn eval` on train/ (images/s as they report it) against a loop that opens, decodes,
resizes (PIL) and runs each image alone.
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

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3
EPOCHS = int(sys.argv[2]) if len(sys.argv) > 2 else 4
PER_CLASS = int(sys.argv[3]) if len(sys.argv) > 3 else 60
SIZE, BATCH = 128, 32
COLOURS = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 70, 210)}
CNN = [sys.executable, "-m", "cnncli"]

REFERENCE = r"""
import json, sys, time, torch, torchvision, torchvision.transforms as T
root, epochs, lr, batch = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
train_tf = T.Compose([T.RandomResizedCrop(128), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
test_tf = T.Compose([T.Resize((128, 128)), T.ToTensor(), T.Normalize(mean, std)])
train = torchvision.datasets.ImageFolder(root + "/train", train_tf)
test = torchvision.datasets.ImageFolder(root + "/test", test_tf)
dl = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
model = torchvision.models.resnet18(num_classes=len(train.classes))
opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(dl))
loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
seconds = []
for epoch in range(epochs):
    model.train()
    t0 = time.perf_counter()
    for x, y in dl:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        sched.step()
    seconds.append(time.perf_counter() - t0)
model.eval()
correct = 0
with torch.no_grad():
    for x, y in torch.utils.data.DataLoader(test, batch_size=64, num_workers=2):
        correct += int((model(x).argmax(1) == y).sum())
print(json.dumps({"seconds": seconds, "accuracy": correct / len(test)}))
"""


MODEL_ALONE = r"""
import json, sys, time, torch, torchvision
n, batch = int(sys.argv[1]), int(sys.argv[2])
model = torchvision.models.resnet18(num_classes=3).to(memory_format=torch.channels_last).train()
opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
x = torch.randn(batch, 3, 128, 128).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 3, (batch,))
seconds = []
for epoch in range(3):
    t0 = time.perf_counter()
    for _ in range(n // batch):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    seconds.append(time.perf_counter() - t0)
print(json.dumps({"seconds": seconds}))
"""


def model_alone() -> float:
    """An epoch's training steps on one batch already in memory: what no loader can beat (fp32, channels-last)."""
    p = subprocess.run(
        [sys.executable, "-c", MODEL_ALONE, str(3 * PER_CLASS), str(BATCH)], check=True, capture_output=True, text=True
    )
    return statistics.median(json.loads(p.stdout.strip().splitlines()[-1])["seconds"][1:])


def write_folder(root: str) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    h, w = 1536, 2048
    yy, xx = np.mgrid[0:h, 0:w]
    for split, n in (("train", PER_CLASS), ("val", max(3, PER_CLASS // 5)), ("test", max(3, PER_CLASS // 5))):
        for name, colour in COLOURS.items():
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for i in range(n):
                small = rng.random((h // 96 + 2, w // 96 + 2, 3))
                img = np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)).copy()
                cy, cx, r = (
                    rng.integers(h // 5, 4 * h // 5),
                    rng.integers(w // 5, 4 * w // 5),
                    rng.integers(h // 8, h // 4),
                )
                img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
                img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)  # sensor noise, fine detail
                Image.fromarray(img).save(os.path.join(root, split, name, f"{i:03d}.jpg"), quality=90)


def cnn_train(root: str, project: str, name: str, *extra: str) -> dict:
    subprocess.run(
        [*CNN, "train", "tv:resnet18", "--data", f"folder:{root}", "--img-size", str(SIZE), "--batch-size", str(BATCH),
         "--epochs", str(EPOCHS), "--project", project, "--name", name, *(extra or ("--precision", "32"))],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    run = os.path.join(project, name)
    with open(os.path.join(run, "metrics.csv")) as f:
        rows = [line.strip().split(",") for line in f][1:]
    with open(os.path.join(run, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(run, "args.json")) as f:
        lr = json.load(f)["lr"]
    return {"seconds": [float(r[-1]) for r in rows], "accuracy": summary.get("test_accuracy"), "lr": lr, "run": run}


def reference(root: str, lr: float) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", REFERENCE, root, str(EPOCHS), str(lr), str(BATCH)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def decode_ceilings(files: list[str]) -> tuple[float, float]:
    from PIL import Image

    def rate(draft: bool) -> float:
        t0 = time.perf_counter()
        for f in files:
            with Image.open(f) as im:
                if draft:
                    im.draft("RGB", (SIZE, SIZE))
                im.convert("RGB").load()
        return len(files) / (time.perf_counter() - t0)

    rate(True)  # the decoder's first use
    return rate(False), rate(True)


def pil_loop(run: str, files: list[str]) -> float:
    """Per image: open, decode, resize with PIL, normalize, run alone (what a first script does)."""
    import torch
    import torchvision.transforms as T

    from cnncli.models.open import open_model

    model = open_model(os.path.join(run, "best.pt")).model.eval()
    tf = T.Compose([T.Resize((SIZE, SIZE)), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    from PIL import Image

    t0 = time.perf_counter()
    with torch.no_grad():
        for f in files:
            model(tf(Image.open(f).convert("RGB"))[None]).softmax(1)
    return len(files) / (time.perf_counter() - t0)


def main() -> None:
    tmp = tempfile.mkdtemp(prefix="camera-")
    root = os.path.join(tmp, "photos")
    t0 = time.perf_counter()
    write_folder(root)
    files = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(root, "test")) for f in fs)
    print(f"wrote {3 * PER_CLASS} + 2 x {len(files)} JPEGs 2048x1536 q90 in {time.perf_counter() - t0:.0f}s ({root})")
    load = os.getloadavg()[0]
    full, draft = decode_ceilings(files[:24])
    print(
        f"decode ceiling, one core: full {full:.1f} images/s, at the scale covering {SIZE}px {draft:.1f} images/s ({draft / full:.1f}x)"
    )
    rows: dict[str, list] = {
        "A reference": [],
        "B cnn (defaults)": [],
        "C cnn --cache none": [],
        "D cnn --cache ram": [],
        "E cnn --precision auto": [],
    }
    acc: dict[str, list] = {k: [] for k in rows}
    b = None
    for r in range(ROUNDS):
        b = cnn_train(root, tmp, f"b{r}")
        a = reference(root, b["lr"])
        c = cnn_train(root, tmp, f"c{r}", "--cache", "none", "--precision", "32")
        d = cnn_train(root, tmp, f"d{r}", "--cache", "ram", "--precision", "32")
        e = cnn_train(root, tmp, f"e{r}", "--precision", "auto")
        for key, res in zip(rows, (a, b, c, d, e)):
            rows[key].append(statistics.median(res["seconds"][1:]))
            acc[key].append(res["accuracy"])
        print(f"round {r + 1}: " + ", ".join(f"{k.split()[0]} {v[-1]:.2f}s" for k, v in rows.items()), flush=True)
    alone = model_alone()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\nper epoch after the first (median of {ROUNDS} rounds; load average {load:.1f} when it started):")
    for k, v in med.items():
        print(
            f"  {k:22s} {v:6.2f} s/epoch  {3 * PER_CLASS / v:6.1f} img/s  test top-1 {', '.join(f'{x:.1%}' for x in acc[k])}"
        )
    print(
        f"  {'the model alone':22s} {alone:6.2f} s/epoch  (the same steps on one batch in memory: no loader is faster)"
    )
    a_ = med["A reference"]
    print(
        "  "
        + "   ".join(f"A/{k[0]} = {a_ / v:.2f}x" for k, v in med.items() if k[0] != "A")
        + f"   A/model alone = {a_ / alone:.2f}x"
    )
    every = sorted(os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs)
    p = subprocess.run([*CNN, "predict", os.path.join(b["run"], "best.pt"), root, "--json"],
                       check=True, capture_output=True, text=True)  # fmt: skip
    predict = json.loads(p.stdout)["images_per_second"]
    p = subprocess.run([*CNN, "eval", os.path.join(b["run"], "best.pt"), "--data", f"folder:{root}", "--split", "train",
                        "--json"], check=True, capture_output=True, text=True)  # fmt: skip
    ev = json.loads(p.stdout)["images_per_second"]
    loop = pil_loop(b["run"], every)
    print(f"\non all {len(every)} photos: predict {predict:.1f} images/s, eval (train/, {3 * PER_CLASS}) {ev:.1f} images/s, "
          f"per-image PIL loop {loop:.1f} images/s ({predict / loop:.1f}x, {ev / loop:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
