"""The checkpoint format, in one place: a small dataclass written as a plain dict of tensors and builtins.

On disk a checkpoint is a dict loadable with `torch.load(path, weights_only=True)`: it never needs pickled
classes. It records how to rebuild the model (`ModelSpec`: registry name and constructor arguments, plus the
fully-convolutional conversion if any), the state dict, the preprocessing (classes, input size, normalization),
the training arguments, metrics and versions; `last.pt` also carries the training state (optimizer, scheduler,
scaler, RNG, best accuracy, history) so a run resumes exactly. Writes are atomic (`fileio.atomic_write`).

Only this module knows the dict's keys; everything else uses `Checkpoint`.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field, replace

import torch

from cnncli import __version__
from cnncli.errors import UsageError, reading, shown
from cnncli.fileio import atomic_write, check_input
from cnncli.preprocess import Preprocess

FORMAT = "cnncli-checkpoint/1"
# what last.pt has beyond best.pt: everything needed to continue the run exactly
TRAINING_KEYS = (
    "optimizer",
    "scheduler",
    "scaler",
    "rng",
    "best_accuracy",
    "epochs_without_improvement",
    "history",
    "running",
)
OPTIONAL_TRAINING_KEYS = ("ema",)  # the weights' moving average of a --ema run


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model from the registry: its name and the constructor arguments it was built with."""

    name: str
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    # the image size the architecture is built for, when the weights need another layout than `image_size` would
    # give (a 7x7-stem resnet18 run on 32x32 images): None = image_size
    build_size: tuple[int, int] | None = None

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.in_channels, *self.image_size)

    def to_dict(self) -> dict:
        d = {
            "name": self.name,
            "num_classes": int(self.num_classes),
            "in_channels": int(self.in_channels),
            "image_size": [int(v) for v in self.image_size],
        }
        if self.build_size is not None:
            d["build_size"] = [int(v) for v in self.build_size]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Raises ValueError/TypeError/KeyError for anything a model could not be built from."""
        name, size = d["name"], d["image_size"]
        if not isinstance(name, str) or not name:
            raise ValueError(f"model name {name!r}")
        if isinstance(size, (str, bytes)) or len(size) != 2:
            raise ValueError(f"image_size {size!r}")
        build = d.get("build_size")
        if build is not None and (isinstance(build, (str, bytes)) or len(build) != 2):
            raise ValueError(f"build_size {build!r}")
        return cls(
            name,
            _count(d["num_classes"]),
            _count(d["in_channels"]),
            (_count(size[0]), _count(size[1])),
            None if build is None else (_count(build[0]), _count(build[1])),
        )


def _count(v) -> int:
    """A positive int (not a bool, not a float with a fraction, not a string)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{v!r} is not a positive integer")
    return v


@dataclass
class Checkpoint:
    model: ModelSpec
    state_dict: dict
    preprocess: Preprocess
    dataset: str = ""
    args: dict = field(default_factory=dict)  # the resolved TrainConfig
    metrics: dict = field(default_factory=dict)
    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # > 0: written mid-epoch (Ctrl-C, SIGTERM)
    global_step: int = 0
    fcn: dict | None = None  # the fully-convolutional conversion's facts (stride, RF, offset)
    training: dict | None = None  # last.pt only: TRAINING_KEYS
    versions: dict = field(default_factory=dict)
    pretrained: dict | None = None  # the published weights the run started from (models/published.py: record)

    @property
    def fully_convolutional(self) -> bool:
        return bool(self.fcn)

    def without_training(self) -> Checkpoint:
        return replace(self, training=None)

    def to_dict(self) -> dict:
        p = self.preprocess
        d = {
            "format": FORMAT,
            "versions": {"cnncli": __version__, "torch": str(torch.__version__)},
            "model": self.model.to_dict(),
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.state_dict.items()},
            "classes": list(p.classes),
            "input_size": list(p.input_size),
            "normalization": {"mean": list(p.mean), "std": list(p.std)},
            "dataset": self.dataset,
            "args": dict(self.args),
            "metrics": dict(self.metrics),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "fcn": self.fcn,
        }
        if self.pretrained is not None:
            d["pretrained"] = dict(self.pretrained)
        if self.training is not None:
            missing = set(TRAINING_KEYS) - set(self.training)
            if missing:
                raise ValueError(f"training state lacks {sorted(missing)}")
            d.update({k: self.training[k] for k in TRAINING_KEYS})
            d.update({k: self.training[k] for k in OPTIONAL_TRAINING_KEYS if k in self.training})
        return d

    @classmethod
    def from_dict(cls, d: dict, path: str = "checkpoint") -> Checkpoint:
        if not isinstance(d, dict) or "model" not in d or "state_dict" not in d:
            raise UsageError(f"{path} is not a cnncli checkpoint", "expected a file written by cnn train or cnn fcn")
        try:
            spec, pre = _spec_and_preprocess(d)
        except Exception as e:  # any field of the wrong type or shape: the file is malformed (exit 2)
            raise UsageError(
                f"{shown(path)} is not a cnncli checkpoint: malformed {type(e).__name__}: {shown(e)}",
                "expected a file written by cnn train or cnn fcn",
            ) from None
        state = d["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise UsageError(
                f"{path} is not a cnncli checkpoint: its state_dict is not a dict of tensors",
                "expected a file written by cnn train or cnn fcn",
            )
        with reading(
            f"{shown(path)} is not a cnncli checkpoint: a malformed field",
            "expected a file written by cnn train or cnn fcn",
        ):
            keys = (*TRAINING_KEYS, *OPTIONAL_TRAINING_KEYS)
            training = {k: d[k] for k in keys if k in d} if "optimizer" in d else None
            dataset, args, metrics = d.get("dataset") or "", d.get("args") or {}, d.get("metrics") or {}
            _check_kinds(d, dataset, args, metrics)
            if training is not None and not isinstance(training.get("optimizer"), dict):
                raise TypeError("'optimizer' is not an optimizer state dict")
            return cls(
                spec,
                d["state_dict"],
                pre,
                dataset,
                args,
                metrics,
                _counter(d, "epoch"),
                _counter(d, "step_in_epoch"),
                _counter(d, "global_step"),
                d.get("fcn"),
                training,
                versions if isinstance(versions := d.get("versions"), dict) else {},
                d.get("pretrained"),
            )

    def save(self, path: str) -> None:
        """Write atomically: a crash never leaves a half-written file under `path`."""
        obj = self.to_dict()
        atomic_write(path, lambda tmp: torch.save(obj, tmp))

    @classmethod
    def load(cls, path: str, map_location="cpu") -> Checkpoint:
        return cls.from_dict(load_dict(path, map_location), path)


def _check_kinds(d: dict, dataset, args, metrics) -> None:
    """The optional fields' types (TypeError names the first that is wrong)."""
    kinds = [("dataset", str), ("args", dict), ("metrics", dict)]
    for (name, kind), value in zip(kinds, (dataset, args, metrics)):
        if not isinstance(value, kind):
            raise TypeError(f"{name!r} is a {type(value).__name__}, not a {kind.__name__}")
    for name in ("fcn", "pretrained"):
        if d.get(name) is not None and not isinstance(d.get(name), dict):
            raise TypeError(f"{name!r} is a {type(d.get(name)).__name__}, not a dict")


def _spec_and_preprocess(d: dict) -> tuple[ModelSpec, Preprocess]:
    spec = ModelSpec.from_dict(d["model"])
    norm = d.get("normalization") or {}
    c = spec.in_channels
    pre = Preprocess(
        tuple(d.get("input_size") or spec.input_size),
        tuple(norm.get("mean") or [0.0] * c),
        tuple(norm.get("std") or [1.0] * c),
        tuple(d.get("classes") or ()),
    )
    return spec, pre


def _counter(d: dict, key: str) -> int:
    """An epoch or step counter: a non-negative int (a bool, float or string there is a malformed file)."""
    v = d.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise TypeError(f"{key!r} is {shown(repr(v), 40)}, not a count")
    return v


def load_dict(path: str, map_location="cpu") -> dict:
    """A `.pt` file's contents, loaded safely: tensors and builtins only; pickled objects are refused, never run."""
    if not os.path.exists(path):
        raise UsageError(f"checkpoint not found: {path}", "check the path, e.g. runs/train/best.pt")
    check_input(path, "checkpoint", kind="model", replaceable=True)  # a run's own last.pt is rewritten on resume
    return safe_load(path, "checkpoint", "is it a file written by cnn train?", map_location)


def safe_load(path: str, what: str, hint: str, map_location="cpu"):
    """The one safe `torch.load` (weights_only): tensors, builtins and a few data-only types; a file that pickles
    any other class is refused naming the classes, never run. `what` and `hint` word the unreadable-file error."""
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):
            raise UsageError(f"unreadable {what} {path}: not a PyTorch file", hint) from None
        names = _unsafe_globals(path)
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UsageError(
            f"refusing to load {path}: it holds pickled Python objects ({listed}); loading them would "
            "run code from the file",
            pickled_from_script_hint(" ".join(names))
            or "save model.state_dict() instead, or pass --trust-code if you trust where the file came from",
        ) from None
    except Exception as e:
        raise unreadable(path, what, hint, e) from None


def pickled_from_script_hint(text: str) -> str | None:
    """A module pickled by a script run as `python train.py` names its class `__main__.Net`, which no other program
    can import (not even with --trust-code): the hint that works."""
    import re

    m = re.search(r"attribute '([A-Za-z_][A-Za-z0-9_]*)' on <module '(?:[\w.]+\.)?__main__'", text) or re.search(
        r"(?<![\w/])__main__\.([A-Za-z_][A-Za-z0-9_]*)(?![\w.])", text
    )
    if m and m.group(1) == "py":  # a path to a __main__.py, not a class
        m = None
    if not m:
        return None
    return (
        f"it was pickled from a script's __main__ ({m.group(1)}), which only that script can load: save "
        f"model.state_dict() there, then pass the file with --model your_script.py:{m.group(1)}"
    )


def unreadable(path: str, what: str, hint: str, e: Exception) -> UsageError:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return UsageError(f"unreadable {what} {path}: {type(e).__name__}: {msg}".rstrip(": "), hint)


def _safe_globals() -> list:
    """Types that are only data, commonly found in training scripts' checkpoints (timm saves its argparse args)."""
    import argparse

    allowed: list = [argparse.Namespace]
    try:
        import numpy as np

        core = getattr(np, "_core", None) or np.core
        allowed += [core.multiarray.scalar, np.dtype]
        allowed += [getattr(np.dtypes, n) for n in dir(np.dtypes) if n.endswith("DType") and n != "ObjectDType"]
    except Exception:  # numpy missing or laid out differently: those files are refused like any pickle
        pass
    return allowed


def _unsafe_globals(path: str) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return ["unknown classes"]
