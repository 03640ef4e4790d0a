"""`cnn predict`: what a model says about images (Ultralytics' `yolo predict`, timm's `inference.py`).

Sources are image files, folders (recursively) and glob patterns. Images are decoded and resized in DataLoader
workers while the model runs on the previous batch; each is resized to the model's input size and normalized the
way the model expects (its checkpoint's or file's preprocessing, or what `--in/--mean/--std` say). The model is
any file `open_model` takes, or an `.onnx` file run in ONNX Runtime with the preprocessing in its metadata: one
`engine/runner.py` runner, as `cnn eval` uses.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cnncli.data.images import IMAGE_EXTENSIONS, is_image_name, walk_images
from cnncli.errors import UsageError, shown
from cnncli.fileio import check_input


def image_files(sources: list[str]) -> list[str]:
    """Every image a list of files, folders (searched recursively) and glob patterns names, in order, once each."""
    out: dict[str, None] = {}
    for src in sources:
        path = os.path.expandvars(os.path.expanduser(src))
        if os.path.isdir(path):
            found = walk_images(path)  # hidden files skipped, link loops followed once
            if not found:
                raise UsageError(
                    f"no images in {shown(src)}", "images end in " + ", ".join(IMAGE_EXTENSIONS[:5]) + "..."
                )
        elif os.path.lexists(path):
            found = [check_input(path, "image", kind="image")]  # a FIFO, a device, a link loop: named here
        elif glob.has_magic(path):
            found = sorted(
                p for p in glob.glob(path, recursive=True) if os.path.isfile(p) and is_image_name(os.path.basename(p))
            )
            if not found:
                raise UsageError(f"no images match {src}", "check the pattern (quote it so the shell leaves it)")
        else:
            raise UsageError(f"image not found: {src}", "give image files, folders or glob patterns")
        out.update(dict.fromkeys(found))
    if not out:
        raise UsageError("give at least one image, folder or glob pattern")
    return list(out)


@dataclass
class Prediction:
    image: str
    topk: list[dict] = field(default_factory=list)  # {"class", "index", "prob"}, most probable first

    def as_dict(self) -> dict:
        return {"image": self.image, "topk": self.topk}


@dataclass
class PredictResult:
    predictions: list[Prediction]
    model: str
    classes: list[str]
    device: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return len(self.predictions) / max(self.seconds, 1e-9)

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "device": self.device,
            "images": len(self.predictions),
            "images_per_second": self.images_per_second,
            "predictions": [p.as_dict() for p in self.predictions],
        }


def predict(
    model_arg: str,
    sources: list[str],
    *,
    request=None,
    topk: int = 5,
    batch_size: int = 64,
    device="cpu",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    expanded: bool = False,
) -> PredictResult:
    """Top-k classes with probabilities for every image the sources name (see the module docstring).
    `expanded`: `sources` is image_files()'s list already (the CLI expands once, to check --csv against it)."""
    from cnncli.config import check_count
    from cnncli.data.loader import FolderLoader
    from cnncli.engine.runner import open_runner
    from cnncli.engine.threads import for_reading
    from cnncli.models.open import ModelRequest

    if topk < 1:
        raise UsageError(f"--topk must be at least 1, got {topk}")
    check_count("--batch-size", batch_size)
    paths = list(sources) if expanded else image_files(sources)
    runner = open_runner(model_arg, request or ModelRequest(), device, fast=True)
    pre = runner.preprocess
    c, h, w = pre.input_size
    classes = pre.class_names(runner.num_classes)
    k = min(topk, runner.num_classes)
    if workers is None:  # the thread policy's: workers where decoding costs, the other cores for the model
        workers = for_reading(paths, c, (h, w), runner.device)
    loader = FolderLoader(
        [(p, 0) for p in paths],
        image_size=(h, w),
        channels=c,
        batch_size=batch_size,
        mean=pre.mean,
        std=pre.std,
        train=False,
        workers=workers,
        device=runner.device,
    )
    out: list[Prediction] = []
    t0 = time.perf_counter()
    for x, _ in loader:
        probs = torch.softmax(runner.scores(x), dim=1)
        p, idx = probs.topk(k, dim=1)
        for row_p, row_i in zip(p.tolist(), idx.tolist()):
            out.append(
                Prediction(
                    paths[len(out)], [{"class": classes[i], "index": i, "prob": q} for q, i in zip(row_p, row_i)]
                )
            )
        if progress:
            progress(len(out), len(paths))
    seconds = time.perf_counter() - t0
    return PredictResult(out, model_arg, classes, runner.device_label, seconds, runner.notes)
