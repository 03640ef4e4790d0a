"""`cnn predict` on a folder of images against a plain per-image loop (PIL decode, resize, normalize, model).

Usage: python benchmarks/predict_throughput.py [N_IMAGES] [MODEL]
Writes N_IMAGES (default 2000) 64x48 PNG images to a temp folder and a checkpoint of MODEL (default resnet20, a
CIFAR ResNet at 32x32), then times, in this process:
- the reference: for each file, PIL open + convert + torchvision Resize + normalize + model(x[None]) + softmax/top-5,
  the loop people write first;
- `cnncli.engine.predict.predict` (what `cnn predict` runs): batches of 64, decoding in DataLoader workers overlapped
  with the model.
Three interleaved rounds; prints the median images/s of each and the median ratio, and checks both give the same
top-1 on every image.
"""

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.engine.predict import predict
from cnncli.models import get_model
from cnncli.preprocess import Preprocess

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
MODEL = sys.argv[2] if len(sys.argv) > 2 else "resnet20"
ROUNDS = 3


def write_images(folder: str, n: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        p = os.path.join(folder, f"{i:05d}.png")
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def reference(ck: str, paths: list[str]) -> list[int]:
    """The plain loop: one image at a time."""
    import torchvision.transforms as T
    from PIL import Image

    from cnncli.models.open import open_model

    opened = open_model(ck)
    model, pre = opened.model.eval(), opened.preprocess
    resize, to_tensor = T.Resize(pre.input_size[1:]), T.PILToTensor()
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    top1 = []
    with torch.no_grad():
        for p in paths:
            with Image.open(p) as im:
                x = to_tensor(resize(im.convert("RGB"))).float() / 255
            probs = torch.softmax(model(((x - mean) / std)[None]), 1)
            top1.append(int(probs.topk(5, 1).indices[0, 0]))
    return top1


if __name__ == "__main__":
    torch.set_num_threads(os.cpu_count() or 1)
    tmp = tempfile.mkdtemp()
    folder = os.path.join(tmp, "imgs")
    os.makedirs(folder)
    paths = write_images(folder, N)
    torch.manual_seed(0)
    model = get_model(MODEL, num_classes=10, in_channels=3, image_size=(32, 32))
    ck = os.path.join(tmp, "m.pt")
    Checkpoint(
        ModelSpec(MODEL, 10, 3, (32, 32)),
        model.state_dict(),
        Preprocess((3, 32, 32), (0.5,) * 3, (0.25,) * 3, tuple(f"c{i}" for i in range(10))),
    ).save(ck)
    reference(ck, paths[:50])  # warm-up: first-call costs off both clocks
    predict(ck, [folder], batch_size=64)
    ref_rates, cnn_rates = [], []
    for _ in range(ROUNDS):  # interleaved, so a noisy moment of the machine hits both
        t = time.perf_counter()
        ref = reference(ck, paths)
        ref_rates.append(N / (time.perf_counter() - t))
        t = time.perf_counter()
        res = predict(ck, [folder], batch_size=64)
        cnn_rates.append(N / (time.perf_counter() - t))
    same = sum(a == p.topk[0]["index"] for a, p in zip(ref, res.predictions))
    ratios = sorted(c / r for c, r in zip(cnn_rates, ref_rates))
    print(f"{N} images ({MODEL} at 32x32, {os.cpu_count()} CPU cores, torch {torch.__version__}), {ROUNDS} rounds")
    print(f"reference per-image loop: median {statistics.median(ref_rates):8.1f} img/s")
    print(f"cnn predict (batch 64):   median {statistics.median(cnn_rates):8.1f} img/s")
    print(
        f"ratio cnn predict / reference: median {statistics.median(ratios):.2f}x (rounds: "
        f"{', '.join(f'{r:.2f}' for r in ratios)}); same top-1 on {same}/{N} images"
    )
