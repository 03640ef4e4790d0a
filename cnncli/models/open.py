"""The front door: what a MODEL argument means, for every command.

`open_model(arg)` accepts a registry name, a family, `tv:`/`timm:` names, `path/to/file.py:Class` (random
weights, or `weights=FILE`), or a checkpoint written by `cnn train` / `cnn fcn`, and returns an `OpenedModel`:
the module, the spec that rebuilds it, and its preprocessing when known. Commands call this; they never open
model files themselves.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.errors import UsageError
from cnncli.models._registry import get_model, is_user_model, resolve
from cnncli.preprocess import Preprocess


@dataclass
class OpenedModel:
    """A model ready to run, with what is known about its inputs and outputs."""

    model: nn.Module
    spec: ModelSpec
    preprocess: Preprocess | None = None      # None: a bare architecture, nothing is known about its data
    checkpoint: Checkpoint | None = None
    path: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.spec.input_size

    @property
    def classes(self) -> list[str]:
        if self.preprocess is None:
            return [str(i) for i in range(self.spec.num_classes)]
        return self.preprocess.class_names(self.spec.num_classes)

    @property
    def fully_convolutional(self) -> bool:
        return bool(self.checkpoint and self.checkpoint.fully_convolutional)


def is_checkpoint_path(arg: str) -> bool:
    """A MODEL argument that names a file to load rather than an architecture."""
    return arg.endswith((".pt", ".pth")) or (os.path.isfile(arg) and ".py:" not in arg)


def build_model(spec: ModelSpec) -> nn.Module:
    """The architecture a spec describes, with fresh weights."""
    try:
        return get_model(spec.name, num_classes=spec.num_classes, in_channels=spec.in_channels,
                         image_size=tuple(spec.image_size))
    except (MemoryError, RuntimeError) as e:  # a head sized by a huge input: say so instead of an allocator dump
        if not isinstance(e, MemoryError) and "allocate" not in str(e).lower():
            raise
        size = "x".join(map(str, spec.input_size))
        raise UsageError(f"{spec.name} for a {size} input is too large for this machine's memory",
                         "give a smaller --in") from None


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint describes (re-converting it if it is fully convolutional) and load its weights."""
    model = build_model(ckpt.model)
    if ckpt.fully_convolutional:
        from cnncli.fcn import to_fully_convolutional

        model = to_fully_convolutional(model, ckpt.model.input_size, verify=False).model
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise UsageError(f"checkpoint weights do not fit model {ckpt.model.name}: {str(e).splitlines()[0]}",
                         "was the model file changed since training?") from None
    return model


def probe(model: nn.Module, input_size: tuple[int, int, int], device: str = "cpu") -> torch.Tensor:
    """One forward pass on zeros; a model that fails on this input, or does not return a tensor, is a UsageError
    naming the cause (torchinfo would only say "see above stack traces")."""
    size = "x".join(map(str, (1, *input_size)))
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size, device=device))
    except MemoryError:
        raise UsageError(f"a {size} input is too large for this machine's memory", "give a smaller --in") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "allocate" in msg.lower() or "out of memory" in msg.lower():
            raise UsageError(f"a {size} input is too large for this machine's memory", "give a smaller --in") from None
        raise UsageError(f"the model fails on a {size} input: {type(e).__name__}: {msg}",
                         "check --in against the input size the model expects") from None
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"the model returns {type(out).__name__}, not a tensor", "forward() must return the logits")
    return out


def trusted_spec(ckpt: Checkpoint, path: str, model: str | None) -> ModelSpec:
    """The spec to build: a checkpoint never decides by itself to import a Python file. One trained from
    `file.py:Class` is rebuilt only when the user names that model (`--model file.py:Class`, the same file or the
    file where it lives now)."""
    spec = ckpt.model
    if not is_user_model(spec.name):
        if model and model != spec.name:
            raise UsageError(f"{path} holds a {spec.name}, not {model}", "leave out --model, or give the right file")
        return spec
    if not model:
        raise UsageError(f"{path} was trained from the Python file {spec.name}; cnn imports a .py file only when you "
                         "name it", f"add --model {spec.name} to run that file")
    if not is_user_model(model):
        raise UsageError(f"{path} was trained from {spec.name}, not {model}", f"give --model {spec.name}")
    return replace(spec, name=model)


def open_checkpoint(path: str, model: str | None = None) -> OpenedModel:
    """A checkpoint written by cnn train or cnn fcn; `model` names the Python file of a user model (see above)."""
    ckpt = Checkpoint.load(path)
    ckpt = replace(ckpt, model=trusted_spec(ckpt, path, model))
    return OpenedModel(model_from_checkpoint(ckpt), ckpt.model, ckpt.preprocess, ckpt, path)


def open_model(arg: str, *, input_size: tuple | None = None, num_classes: int | None = None,
               weights: str | None = None, model: str | None = None) -> OpenedModel:
    """A MODEL argument as every command takes it (see the module docstring)."""
    if is_checkpoint_path(arg):
        return open_checkpoint(arg, model)
    info = resolve(arg)
    c, h, w = input_size if input_size else info.input_size
    spec = ModelSpec(info.qualified if info.source != "file" else arg, num_classes or info.num_classes,
                     c or info.input_size[0], (h, w))
    model = build_model(spec)
    if weights:
        load_weights(model, weights, arg)
    return OpenedModel(model, spec)


def load_weights(model: nn.Module, path: str, what: str) -> None:
    """Load a state dict file (plain, or under `state_dict`) into `model`; pickled objects are refused."""
    if not os.path.exists(path):
        raise UsageError(f"weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise UsageError(f"refusing to load {path}: it contains pickled Python objects") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"weights {path} do not fit {what}: {str(e).splitlines()[0]}") from None
