"""Checkpoints: plain dicts of tensors and builtins, loadable with `torch.load(..., weights_only=True)`.

They record how to rebuild the model (registry name and constructor arguments, plus the fully-convolutional
conversion if any), the state dict, classes, input size, normalization, training arguments, metrics and
versions. They are written atomically: a temp file in the same folder, fsync, then rename, so a crash never
leaves a half-written `last.pt` or `best.pt`.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnncli import __version__
from cnncli.errors import UsageError

FORMAT = "cnncli-checkpoint/1"


def atomic_write(path: str, write) -> None:
    """Call `write(tmp_path)` then rename onto `path`; on failure nothing is left behind."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_checkpoint(obj: dict, path: str) -> None:
    """Atomically save a checkpoint dict."""
    obj = {"format": FORMAT, "versions": {"cnncli": __version__, "torch": str(torch.__version__)}, **obj}
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint safely: tensors and builtins only; pickled objects are refused, never run."""
    if not os.path.exists(path):
        raise UsageError(f"checkpoint not found: {path}", "check the path, e.g. runs/train/best.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln.strip() for ln in first if "GLOBAL" in ln), "")
        if not detail:
            raise UsageError(f"unreadable checkpoint {path}: not a torch checkpoint file",
                             "is it a file written by cnn train?") from None
        detail = detail.split(" was not")[0].replace("WeightsUnpickler error: ", "")
        raise UsageError(f"refusing to load {path}: it contains pickled Python objects, which could run code",
                         f"cnncli checkpoints hold only tensors and plain values; {detail}".rstrip("; ")) from None
    except Exception as e:
        raise UsageError(f"unreadable checkpoint {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                         "is it a file written by cnn train?") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise UsageError(f"{path} is not a cnncli checkpoint", "expected a file written by cnn train or cnn fcn")
    return ckpt


@dataclass
class LoadedModel:
    """A model ready to run, with what is known about its inputs and outputs."""

    model: nn.Module
    name: str
    input_size: tuple[int, int, int]
    num_classes: int
    classes: list[str] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    checkpoint: dict | None = None
    path: str | None = None

    @property
    def fully_convolutional(self) -> bool:
        return bool(self.checkpoint and self.checkpoint.get("fcn"))


def model_spec(name: str, num_classes: int, in_channels: int, image_size) -> dict:
    return {"name": name, "num_classes": int(num_classes), "in_channels": int(in_channels),
            "image_size": [int(v) for v in image_size]}


def build_from_checkpoint(ckpt: dict) -> nn.Module:
    """Rebuild the model described by a checkpoint and load its weights."""
    from cnncli.models import get_model

    spec = ckpt["model"]
    model = get_model(spec["name"], num_classes=spec["num_classes"], in_channels=spec["in_channels"],
                      image_size=tuple(spec["image_size"]))
    if ckpt.get("fcn"):
        from cnncli.fcn import to_fully_convolutional

        model = to_fully_convolutional(model, (spec["in_channels"], *spec["image_size"]), verify=False).model
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise UsageError(f"checkpoint weights do not fit model {spec['name']}: {str(e).splitlines()[0]}",
                         "was the model file changed since training?") from None
    return model


def open_model(spec: str, *, input_size: tuple | None = None, num_classes: int | None = None,
               weights: str | None = None) -> LoadedModel:
    """A MODEL argument as every command takes it: a registry/family name, `file.py:Class`, or a `.pt` checkpoint."""
    if spec.endswith(".pt") or spec.endswith(".pth") or (os.path.isfile(spec) and ".py:" not in spec):
        ckpt = load_checkpoint(spec)
        m = ckpt["model"]
        model = build_from_checkpoint(ckpt)
        norm = ckpt.get("normalization") or {}
        return LoadedModel(model, m["name"], (m["in_channels"], *m["image_size"]), m["num_classes"],
                           list(ckpt.get("classes") or []), norm.get("mean"), norm.get("std"), ckpt, spec)
    from cnncli.models import get_model, resolve

    info = resolve(spec)
    c, h, w = input_size if input_size else info.input_size
    c = c or info.input_size[0]
    nc = num_classes or info.num_classes
    model = get_model(spec, num_classes=nc, in_channels=c, image_size=(h, w))
    if weights:
        if not os.path.exists(weights):
            raise UsageError(f"weights file not found: {weights}")
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UsageError(f"refusing to load {weights}: it contains pickled Python objects") from None
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise UsageError(f"weights {weights} do not fit {spec}: {str(e).splitlines()[0]}") from None
    return LoadedModel(model, info.qualified if info.source != "file" else spec, (c, h, w), nc)
