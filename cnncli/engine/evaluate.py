"""Evaluation of a checkpoint (PyTorch) or an exported model (ONNX Runtime) on a dataset split.

The checkpoint's own preprocessing is used (its mean/std and input size), and BatchNorm is in eval mode.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F

from cnncli.errors import UsageError
from cnncli.preprocess import Preprocess


@dataclass
class EvalResult:
    """What `cnn eval` measured: the `--json` object, key for key (`as_json`)."""

    accuracy: float
    top5: float | None  # with more than 5 classes
    loss: float
    per_class: dict  # class name -> accuracy (None: no image of that class)
    confusion: list  # rows: true class, columns: predicted
    classes: list
    samples: int
    images_per_second: float
    device: str = ""
    model: str = ""
    data: str = ""
    split: str = ""
    input: list = field(default_factory=list)
    precision: float = 0.0  # macro averages over the classes in the labels or the predictions (scikit-learn's)
    recall: float = 0.0
    f1: float = 0.0
    balanced_accuracy: float = 0.0  # the mean recall of the classes that have images
    per_class_metrics: dict = field(default_factory=dict)  # class -> precision, recall, f1, support
    predicted: list = field(default_factory=list, repr=False)  # per image, in the split's order: the top class...
    confidence: list = field(default_factory=list, repr=False)  # ...and its softmax probability (not in the JSON)
    labels: list = field(default_factory=list, repr=False)  # the true class index of each image

    def as_json(self) -> dict:
        d = asdict(self)
        for key in ("predicted", "confidence", "labels"):
            d.pop(key)
        return d

    def mistakes(self) -> list[int]:
        """The images (indices in the split's order) the model got wrong, the most confident mistakes first."""
        wrong = [i for i, (p, t) in enumerate(zip(self.predicted, self.labels)) if p != t]
        return sorted(wrong, key=lambda i: -self.confidence[i])


EVAL_BATCH = 256  # cnn eval's batch for in-memory datasets
FILE_BATCH = 64  # ...and for image files (eval's batch for files, 256, took 1.6x longer on camera photos)


def batches_for(data, split: str, preprocess: Preprocess, *, batch_size: int, device="cpu", workers: int = 2):
    """(x, y) batches of a split, preprocessed the way the model expects (its input size, its mean/std)."""
    from cnncli.data.datasets import TensorData
    from cnncli.data.images import resize
    from cnncli.data.loader import FolderLoader, TensorLoader

    c, h, w = preprocess.input_size
    if data.input_size[0] != c:
        raise UsageError(
            f"the model takes {c}-channel images but {data.name} has {data.input_size[0]}",
            "evaluate on the dataset the model was trained for",
        )
    if isinstance(data, TensorData):
        x, y = data.split(split)
        x = resize(x, (h, w))  # once, in memory, to the model's input size, by the one resize policy
        return TensorLoader(
            x, y, batch_size=batch_size, mean=preprocess.mean, std=preprocess.std, train=False, device=device
        )
    return FolderLoader(
        data.split(split),
        image_size=(h, w),
        channels=c,
        batch_size=batch_size,
        mean=preprocess.mean,
        std=preprocess.std,
        train=False,
        workers=workers,
        device=device,
    )


def metrics_from_logits(
    all_logits: torch.Tensor, labels: torch.Tensor, classes: list[str], seconds: float
) -> EvalResult:
    """accuracy, top5, loss, per-class accuracy, confusion matrix from stacked logits (never from NaN scores)."""
    from cnncli.engine.runtime import check_finite_outputs

    check_finite_outputs(all_logits, "the model")
    n, k = all_logits.shape
    pred = all_logits.argmax(1)
    acc = int((pred == labels).sum()) / n if n else 0.0
    top5 = None
    if k > 5:
        top5 = int((all_logits.topk(5, 1).indices == labels[:, None]).any(1).sum()) / n
    loss = F.cross_entropy(all_logits.float(), labels).item() if n else float("nan")
    conf = torch.zeros(k, k, dtype=torch.long)
    conf.index_put_((labels, pred), torch.ones_like(labels), accumulate=True)
    names = classes if len(classes) == k else [str(i) for i in range(k)]
    per_class = {}
    for i, name in enumerate(names):
        total = int(conf[i].sum())
        per_class[name] = (int(conf[i, i]) / total) if total else None
    probs = all_logits.float().softmax(1).max(1).values if n else torch.zeros(0)
    res = EvalResult(acc, top5, loss, per_class, conf.tolist(), names, int(n), n / max(seconds, 1e-9))
    return replace(
        res, **class_report(conf, names), predicted=pred.tolist(), confidence=probs.tolist(), labels=labels.tolist()
    )


def class_report(conf: torch.Tensor, names: list[str]) -> dict:
    """Precision, recall, F1 and support per class and their macro averages from a confusion matrix (rows: true,
    columns: predicted), as scikit-learn's `classification_report(y_true, y_pred)` gives them: the classes that
    occur in the labels or the predictions, 0 where a ratio has nothing to divide; the balanced accuracy as
    `balanced_accuracy_score` (the mean recall over the classes that have images)."""
    conf = conf.double()
    tp = conf.diag()
    support, predicted = conf.sum(1), conf.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-300), torch.zeros_like(tp))
    present = (support > 0) | (predicted > 0)
    per_class = {
        names[i]: {
            "precision": precision[i].item(),
            "recall": recall[i].item(),
            "f1": f1[i].item(),
            "support": int(support[i].item()),
        }
        for i in range(len(names))
        if present[i]
    }

    def macro(v: torch.Tensor, where: torch.Tensor) -> float:
        return v[where].mean().item() if bool(where.any()) else 0.0

    return {
        "precision": macro(precision, present),
        "recall": macro(recall, present),
        "f1": macro(f1, present),
        "balanced_accuracy": macro(recall, support > 0),
        "per_class_metrics": per_class,
    }


def evaluate_runner(runner, loader, classes: list[str]) -> EvalResult:
    """Metrics of a model (engine/runner.py) over a loader. Logits stay on the device until the end: no batch waits
    for the one before."""
    logits, labels = [], []
    t0 = time.perf_counter()
    for x, y in loader:
        logits.append(runner.logits(x))
        labels.append(y)
    if not logits:
        raise UsageError("the split is empty")
    out = torch.cat(logits).cpu()
    target = torch.cat([t.to(out.device) for t in labels])
    return metrics_from_logits(out, target, classes, time.perf_counter() - t0)


def label_map(model_classes: list[str], data_classes: list[str], path: str, data: str) -> list[int] | None:
    """Dataset label -> model output index, matched by class name; None when they are the same list. A class the
    model does not know is a UsageError naming it: scores against the wrong classes are never reported."""
    if not model_classes or list(model_classes) == list(data_classes):
        return None
    unknown = [c for c in data_classes if c not in model_classes]
    if unknown:
        shown = ", ".join(map(repr, unknown[:5])) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise UsageError(
            f"{data} has classes {path} does not know: {shown}",
            "the model's classes: " + ", ".join(model_classes[:10]) + ("..." if len(model_classes) > 10 else ""),
        )
    return [model_classes.index(c) for c in data_classes]


class Relabelled:
    """A loader whose labels are mapped to the model's class indices (`lut` None: unchanged)."""

    def __init__(self, loader, lut: list[int] | None):
        self.loader, self.lut = loader, lut

    def __iter__(self):
        lut = None
        for x, y in self.loader:
            if self.lut is not None:
                lut = lut if lut is not None else torch.tensor(self.lut, device=y.device)
                y = lut[y]
            yield x, y


def evaluate_file(
    path: str,
    data: str | None,
    split: str | None,
    *,
    data_dir: str | None = None,
    batch_size: int | None = None,
    device=None,
    workers: int | None = None,
    request=None,
    log=lambda msg: None,
    gallery: str | None = None,
) -> EvalResult:
    """`cnn eval`: any model file in PyTorch on `device`, or an `.onnx` file in ONNX Runtime, on a dataset split,
    each with its own recorded preprocessing (or, for files that carry none, the command line's or the
    architecture's, as logged: the same as every other command's, so a gate measures the file that is deployed). `data` defaults to the dataset the model was trained on."""
    from cnncli.config import check_count
    from cnncli.data import load_dataset
    from cnncli.engine.runner import open_runner
    from cnncli.models.open import ModelRequest

    if batch_size is not None:
        check_count("--batch-size", batch_size)
    req = request or ModelRequest()
    ds = load_dataset(data, data_dir) if data else None
    if ds is not None:
        req = replace(req, dataset_classes=tuple(ds.classes))  # names for the outputs; the images are the model's
    runner = open_runner(path, req, device or "cpu")
    name = data or runner.dataset
    if not name:
        raise UsageError("give --data", f"{path} does not say which dataset it was trained on")
    ds = ds or load_dataset(name, data_dir)
    split, split_note = pick_split(ds, split)
    notes = [*runner.notes, *getattr(ds, "notes", ()), *([split_note] if split_note else [])]
    files = [p for p, _ in ds.split(split)] if getattr(ds, "folders", None) is not None else []
    if workers is None:  # a folder's files: the thread policy's workers (engine/threads.py), else none needed
        from cnncli.engine.threads import for_reading

        workers = for_reading(files, runner.preprocess.channels, runner.preprocess.input_size[1:], runner.device)
    if batch_size is None:  # image files: batches small enough that decoding the next one overlaps the model
        batch_size = FILE_BATCH if files else EVAL_BATCH
    res = measure(runner, ds, split, path=path, batch_size=batch_size, workers=workers, name=name, log=log, notes=notes)
    if gallery:
        png, csv = write_gallery(res, ds, split, gallery)
        log(f"misclassified: {len(res.mistakes()):,} images, {png} and {csv}")
    return res


GALLERY_MAX = 64  # the grid shows the most confident mistakes; the CSV lists every one
GALLERY_FILES = ("misclassified.png", "misclassified.csv")


def write_gallery(res: EvalResult, ds, split: str, folder: str) -> tuple[str, str]:
    """`cnn eval --gallery DIR`: the misclassified images as a labelled grid (true, predicted, confidence; the most
    confident mistakes first) and every one of them in a CSV (image, true, predicted, confidence)."""
    import os

    from cnncli.data.images import read_image
    from cnncli.fileio import write_csv
    from cnncli.plots import plot_gallery

    os.makedirs(folder, exist_ok=True)
    png, csv = (os.path.join(folder, f) for f in GALLERY_FILES)
    wrong = res.mistakes()
    files = [p for p, _ in ds.split(split)] if getattr(ds, "folders", None) is not None else None
    names = res.classes

    def image_name(i: int) -> str:
        return files[i] if files is not None else f"{ds.name}/{split}[{i}]"

    rows = [[image_name(i), names[res.labels[i]], names[res.predicted[i]], f"{res.confidence[i]:.4f}"] for i in wrong]
    write_csv(csv, ["image", "true", "predicted", "confidence"], rows)
    shown = wrong[:GALLERY_MAX]
    if files is not None:
        side = 160  # a thumbnail: camera photos are decoded at a reduced JPEG scale
        pictures = [read_image(files[i], ds.channels, draft=(side, side)) for i in shown]
    else:
        x = ds.split(split)[0]
        pictures = [x[i] for i in shown]
    titles = [f"{names[res.labels[i]]} -> {names[res.predicted[i]]}\n{res.confidence[i]:.0%}" for i in shown]
    plot_gallery(
        pictures,
        titles,
        png,
        f"{res.model} on {res.data} {split}: {len(wrong):,} of {res.samples:,} misclassified"
        + (f" (the {len(shown)} most confident shown)" if len(wrong) > len(shown) else "")
        + "; true -> predicted, confidence",
    )
    return png, csv


def measure(
    runner,
    ds,
    split: str,
    *,
    path: str,
    batch_size: int = 256,
    workers: int = 2,
    name: str = "",
    log=lambda msg: None,
    notes=(),
) -> EvalResult:
    """A runner's metrics on one split of a loaded dataset, labels matched to the model's classes by name: what
    `cnn eval` reports, and what export's accuracy gate and `cnn benchmark` compare. `notes` (what was detected or
    assumed) are logged once the input is known to be good."""
    name = name or ds.name
    pre = runner.preprocess
    model_classes = list(pre.classes)
    if not model_classes and ds.num_classes > runner.num_classes:
        raise UsageError(
            f"{name} has {ds.num_classes} classes, the model {runner.num_classes}",
            "evaluate on the dataset the model was trained for",
        )
    loader = batches_for(ds, split, pre, batch_size=batch_size, device=runner.device, workers=workers)
    lut = label_map(model_classes, ds.classes, path, name)
    for note in notes:
        log(note)
    res = evaluate_runner(runner, Relabelled(loader, lut), model_classes or ds.classes)
    return replace(res, device=runner.device_label, model=path, data=name, split=split, input=list(pre.input_size))


def pick_split(ds, split: str | None) -> tuple[str, str]:
    """The split `cnn eval` measures, and a note when it is not the obvious one. A folder of class sub-folders is
    evaluated whole; a folder with split folders gives test/, else val/ (said); other datasets their test split."""
    folders = getattr(ds, "folders", None)
    if folders is None:
        return split or "test", ""
    n = ds.num_samples
    if not folders:
        if split is None:
            return "all", f"{ds.name}: all {n('all'):,} images (one folder of classes, evaluated whole)"
        if split == "test":
            raise UsageError(f"{ds.name} has no test/ folder", "leave out --split to evaluate every image")
        return (split, f"{ds.name}: the seeded {split} part ({n(split):,} images) of the folder, as cnn train split it")
    if split is None:
        split = "test" if "test" in folders else "val" if "val" in folders else None
        if split is None:
            raise UsageError(f"{ds.name} has train/ only", "give --split train, or add a test/ or val/ folder")
        return (split, "" if split == "test" else f"{ds.name}: no test/ folder, evaluating val/ ({n('val'):,} images)")
    if split not in ds.splits:
        raise UsageError(f"{ds.name} has no {split}/ folder", "folders there: " + ", ".join(f + "/" for f in folders))
    return split, ""
