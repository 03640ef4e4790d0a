"""The front door: what a MODEL argument means, for every command.

`open_model(arg, request)` accepts
- a registry name, a family, `tv:`/`timm:` names or `path/to/file.py:Class` (random weights, or `--weights FILE`);
- a checkpoint written by `cnn train` / `cnn fcn`;
- a state dict, plain or wrapped (see `files.py`): its architecture is `--model NAME`, or detected from its tensors'
  names and shapes (`detect.py`);
- a TorchScript archive, a torch.export program (.pt2), and with `--trust-pickle` a whole pickled module;
and returns an `OpenedModel`: the module, the spec that rebuilds it (when the registry can), its preprocessing, and
notes saying what was detected or assumed. Commands call this; they never open model files themselves.

Preprocessing a file does not carry comes, in this order, from the command line (`--in`, `--mean`, `--std`,
`--classes`), the file, the architecture's own defaults (torchvision's weights metadata for torchvision models),
else none; what was assumed is said. It is decided here, once, the same for every command: the dataset `cnn eval`
runs on never changes how a model sees its images (only the names of its outputs), so the accuracy a gate measures
is the accuracy of what `cnn predict` and the exported file compute.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.errors import UsageError
from cnncli.models._factory import get_model
from cnncli.models._registry import is_user_model, resolve
from cnncli.preprocess import Preprocess

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelRequest:
    """What the command line says about a model: every field None/False when not given."""

    model: str | None = None  # --model: the architecture of a state dict, or a checkpoint's file.py
    weights: str | None = None  # --weights: weights for a registry name
    input_size: tuple | None = None  # --in (C, H, W); C may be None
    num_classes: int | None = None  # --num-classes (registry names)
    mean: tuple | None = None
    std: tuple | None = None
    classes: tuple | None = None
    trust_pickle: bool = False
    dataset_classes: tuple | None = None  # eval: the dataset's class names, for outputs the file does not name (they
    # label the outputs; how images are prepared never depends on the command)
    on_meta: bool = False  # a registry name without --weights is built on the meta device (no memory,
    # no initialisation: for commands that only look at its structure)


@dataclass
class OpenedModel:
    """A model ready to run, with what is known about its inputs and outputs."""

    model: nn.Module
    spec: ModelSpec
    preprocess: Preprocess | None = None  # None: a bare architecture, nothing is known about its data
    checkpoint: Checkpoint | None = None
    path: str | None = None
    origin: str = "registry"  # registry | checkpoint | state_dict | torchscript | program | pickle
    notes: list[str] = field(default_factory=list)  # what was detected or assumed, for the log
    source: dict = field(default_factory=dict)  # where it came from, for exported metadata
    dataset: str = ""  # what it was trained on, when the file says

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

    @property
    def rebuildable(self) -> bool:
        """The registry can rebuild it from its spec (so a converted copy can be written as a checkpoint)."""
        return self.origin in ("registry", "checkpoint", "state_dict")

    def to_checkpoint(self) -> Checkpoint:
        """As a cnncli checkpoint (its own, or a new one holding the weights, spec and preprocessing)."""
        if self.checkpoint is not None:
            return self.checkpoint
        if not self.rebuildable:
            raise UsageError(
                f"{self.path or self.name} is {self.origin}: cnn cannot rebuild it from the registry",
                "give the state dict or checkpoint it was made from",
            )
        return Checkpoint(
            self.spec,
            {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            self.preprocess or resolve_preprocess(self.spec, ModelRequest(), {})[0],
            args={"source": self.source},
        )

    def require_rebuildable(self, command: str) -> None:
        """cnn fcn and scoremap rewrite the model's layers: TorchScript, programs and unknown pickled classes cannot."""
        if self.rebuildable:
            return
        what = {"torchscript": "a TorchScript archive", "program": "a torch.export program"}.get(
            self.origin, "a pickled module of a class the registry does not have"
        )
        raise UsageError(
            f"cnn {command} needs a model it can rebuild layer by layer; {self.path} is {what}",
            "give the state dict or checkpoint it was made from (with --model NAME if needed)",
        )


def _is_known_name(arg: str) -> bool:
    try:
        resolve(arg)
        return True
    except UsageError:
        return False


def is_checkpoint_path(arg: str) -> bool:
    """A MODEL argument that names a file to load rather than an architecture."""
    # anything on disk but a folder (a FIFO and a device too: the reading gate names them); a folder that happens to
    # be called like a model (./resnet18/) leaves the name a name
    on_disk = os.path.lexists(arg) and not os.path.isdir(arg) and ".py:" not in arg
    return arg.lower().endswith((".pt", ".pth", ".pt2", ".ckpt", ".bin", ".onnx")) or on_disk


def build_model(spec: ModelSpec) -> nn.Module:
    """The architecture a spec describes, with fresh weights."""
    try:
        return get_model(
            spec.name,
            num_classes=spec.num_classes,
            in_channels=spec.in_channels,
            image_size=tuple(spec.build_size or spec.image_size),
        )
    except (MemoryError, RuntimeError) as e:  # a head sized by a huge input: say so instead of an allocator dump
        if not isinstance(e, MemoryError) and "allocate" not in str(e).lower():
            raise
        size = "x".join(map(str, spec.input_size))
        raise UsageError(
            f"{spec.name} for a {size} input is too large for this machine's memory", "give a smaller --in"
        ) from None


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Rebuild the model a checkpoint describes (re-converting it if it is fully convolutional) and load its weights."""
    model = build_model(ckpt.model)
    if ckpt.fully_convolutional:
        from cnncli.analysis.fcn import to_fully_convolutional

        model = to_fully_convolutional(model, ckpt.model.input_size, verify=False).model
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise UsageError(
            f"checkpoint weights do not fit model {ckpt.model.name}: {str(e).splitlines()[0]}",
            "was the model file changed since training?",
        ) from None
    return model


def probe(
    model: nn.Module, input_size: tuple[int, int, int], device: str = "cpu", assumed: bool = False
) -> torch.Tensor:
    """One forward pass on zeros; a model that fails on this input, or does not return a tensor, is a UsageError
    naming the cause (torchinfo would only say "see above stack traces"). `assumed`: nothing said the input size,
    so it is the likely cause and the message says so."""
    batch = getattr(model, "static_batch", None) or 1  # a torch.export program may take one batch size only
    size = "x".join(map(str, (batch, *input_size)))
    try:
        with torch.no_grad():
            out = model(torch.zeros(batch, *input_size, device=device))
    except MemoryError:
        raise UsageError(f"a {size} input is too large for this machine's memory", "give a smaller --in") from None
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if "allocate" in msg.lower() or "out of memory" in msg.lower():
            raise UsageError(f"a {size} input is too large for this machine's memory", "give a smaller --in") from None
        if assumed:
            raise UsageError(
                f"the model fails on a {size} input, a size assumed because the file does not record one "
                f"({type(e).__name__}{': ' + msg if msg else ''})",
                "give --in CxHxW, the size it was trained at (e.g. --in 3x32x32)",
            ) from None
        raise UsageError(
            f"the model fails on a {size} input: {type(e).__name__}{': ' + msg if msg else ' (no message)'}",
            "check --in against the input size the model expects",
        ) from None
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
        raise UsageError(
            f"{path} was trained from the Python file {spec.name}; cnn imports a .py file only when you name it",
            f"add --model {spec.name} to run that file",
        )
    if not is_user_model(model):
        raise UsageError(f"{path} was trained from {spec.name}, not {model}", f"give --model {spec.name}")
    return replace(spec, name=model)


# ------------------------------------------------------------------------------------------------ the door


def open_model(arg: str, request: ModelRequest | None = None, **fields) -> OpenedModel:
    """A MODEL argument as every command takes it (see the module docstring); `fields` are ModelRequest fields, for
    callers without a request."""
    from cnncli.models.files import read_model_file

    req = replace(request or ModelRequest(), **fields)
    if not is_checkpoint_path(arg):
        if os.path.isdir(arg) and (os.sep in arg or not _is_known_name(arg)):
            raise UsageError(f"{arg} is a folder, not a model file", "give the model file itself")
        return _open_architecture(arg, req)
    mf = read_model_file(arg, trust_pickle=req.trust_pickle)
    if mf.kind == "onnx":
        raise UsageError(
            f"{arg} is an ONNX model; this command runs PyTorch models",
            "cnn eval runs ONNX files; give the .pt it was exported from",
        )
    if mf.kind == "checkpoint":
        return _open_checkpoint_file(mf, req)
    if mf.kind == "state_dict":
        return _open_state_dict(mf.path, mf.state_dict, req, mf.metadata, where=mf.where)
    return _open_module(mf, req)


def _open_architecture(arg: str, req: ModelRequest) -> OpenedModel:
    """A registry name or file.py:Class, with fresh weights or --weights."""
    info = resolve(arg)
    c, h, w = req.input_size if req.input_size else info.input_size
    spec = ModelSpec(
        info.qualified if info.source != "file" else arg,
        req.num_classes or info.num_classes,
        c or info.input_size[0],
        (h, w),
    )
    notes, recorded, defaults = [], {}, spec
    if req.weights:
        from cnncli.models.weights import read_weights

        got = read_weights(req.weights, spec.name, req.input_size, trust_pickle=req.trust_pickle, exact=True)
        fit = got.fit
        if req.num_classes and req.num_classes != fit.num_classes:
            raise UsageError(
                f"{req.weights} has {fit.num_classes} classes, not {req.num_classes}", "leave out --num-classes"
            )
        if req.input_size and req.input_size[0] and req.input_size[0] != fit.in_channels:
            raise UsageError(
                f"{req.weights} takes {fit.in_channels}-channel images, not {req.input_size[0]}",
                f"use --in {fit.in_channels}x{h}x{w}",
            )
        build = got.build_size(info.source, (h, w))
        spec = replace(spec, num_classes=fit.num_classes, in_channels=fit.in_channels, build_size=build)
        model, spec = _load_fitted(spec, got.state, req.weights)
        notes.append(f"weights: {got.describe(build)}")
        recorded, defaults = got.recorded, _as_detected(spec, got.state)
    elif req.on_meta:
        from cnncli.models.detect import build_on_meta

        model = build_on_meta(spec.name, spec.num_classes, spec.in_channels, tuple(spec.build_size or spec.image_size))
    else:
        model = build_model(spec)
    known = bool(req.weights or _asked(req))  # a bare architecture says nothing about data, and assumes nothing
    pre, assumed = resolve_preprocess(defaults, req, recorded)
    return OpenedModel(
        model,
        spec,
        pre if known else None,
        origin="registry",
        notes=notes + (assumed if known else []),
        source={"architecture": spec.name, "weights": req.weights or None},
    )


def _as_detected(spec: ModelSpec, state: dict) -> ModelSpec:
    """The spec whose defaults a weights file gets: the architecture the same file given as MODEL is detected as. A
    built-in model in torchvision's layout (resnet18 at ImageNet sizes) is detected as torchvision's, whose
    weights' normalization it then assumes, as `cnn predict FILE` would."""
    from cnncli.models.detect import fit_named

    info = resolve(spec.name)
    if info.source != "builtin" or spec.build_size or not _is_known_name("tv:" + info.name):
        return spec
    try:
        fit_named("tv:" + info.name, state, (spec.in_channels, *spec.image_size))
    except UsageError:
        return spec
    return replace(spec, name="tv:" + info.name)


def _asked(req: ModelRequest) -> bool:
    return any(v is not None for v in (req.mean, req.std, req.classes))


def _open_checkpoint_file(mf, req: ModelRequest) -> OpenedModel:
    ckpt = mf.checkpoint
    ckpt = replace(ckpt, model=trusted_spec(ckpt, mf.path, req.model))
    return OpenedModel(
        model_from_checkpoint(ckpt),
        ckpt.model,
        ckpt.preprocess,
        ckpt,
        mf.path,
        origin="checkpoint",
        source={"file": mf.path, "kind": "checkpoint", "architecture": ckpt.model.name},
        dataset=ckpt.dataset,
    )


def _open_state_dict(
    path: str, state: dict, req: ModelRequest, meta: dict, *, where: str = "", kind: str = "state_dict"
) -> OpenedModel:
    """A state dict: its architecture named (--model) or detected, the layout its weights need."""
    size = req.input_size
    fit = _fit(req.model, state, size, path)
    info = resolve(fit.name)
    c, h, w = (size[0] or fit.in_channels, *size[1:]) if size else (fit.in_channels, *_default_size(info, fit))
    if c != fit.in_channels:
        raise UsageError(
            f"{path} takes {fit.in_channels}-channel images, not {c}", f"use --in {fit.in_channels}x{h}x{w}"
        )
    build = fit.build_size if (info.source == "builtin" and tuple(fit.build_size) != (h, w)) else None
    spec = ModelSpec(fit.name, fit.num_classes, c, (h, w), build)
    model, spec = _load_fitted(spec, state, path)
    how = "--model" if req.model else "detected"
    notes = [
        f"{path}: {kind.replace('_', ' ')}{' ' + where if where else ''}, architecture {fit.name} ({how}), {fit.num_classes} classes, "
        f"input {c}x{h}x{w}"
        + ("" if size else " (give --in for another size)")
        + (f", layout built for {build[0]}x{build[1]}" if build else "")
        + (f", prefix {fit.prefix!r} stripped" if fit.prefix else "")
    ]
    pre, assumed = resolve_preprocess(spec, req, meta)
    return OpenedModel(
        model,
        spec,
        pre,
        None,
        path,
        origin="state_dict",
        notes=notes + assumed,
        source={"file": path, "kind": kind, "architecture": fit.name, "detected": not req.model},
    )


def _fit(name: str | None, state: dict, size, path: str):
    from cnncli.models.detect import detect, fit_named

    if name:
        return fit_named(name, state, size, what=path)
    return detect(state, size, what=path)


def _default_size(info, fit) -> tuple[int, int]:
    """The image size to run a detected model at when nothing says: the size its layout was fitted at (built-in
    models), torchvision's evaluation crop (torchvision models), or the registry's default."""
    if info.source == "torchvision":
        crop = torchvision_defaults(info.name).get("crop")
        if crop:
            return crop
    return tuple(fit.build_size) if info.source == "builtin" else tuple(info.input_size[1:])


def _load_fitted(spec: ModelSpec, state: dict, path: str) -> tuple[nn.Module, ModelSpec]:
    """Build the spec's model and load the state dict into it, strictly (prefixes stripped)."""
    from cnncli.models.files import align_keys

    model = build_model(spec)
    aligned, _ = align_keys(state, model.state_dict())
    try:
        model.load_state_dict(aligned)
    except RuntimeError as e:
        raise UsageError(
            f"{path} does not fit {spec.name}: {_first_problem(e)}",
            "leave out --model to detect the architecture, or give the right one",
        ) from None
    return model, spec


def _first_problem(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[1][:300] if len(lines) > 1 else (lines[0][:300] if lines else type(e).__name__)


def _open_module(mf, req: ModelRequest) -> OpenedModel:
    """TorchScript, a torch.export program or a trusted pickle: the module as it is. A pickled module whose tensors
    fit a registry architecture is rebuilt from the registry instead (then every command can use it)."""
    if req.model and mf.kind != "pickle":
        raise UsageError(
            f"--model names the architecture of a state dict; {mf.path} is {mf.description}, which runs as saved",
            "leave out --model",
        )
    module = mf.module.eval()
    if mf.kind == "pickle":
        rebuilt = _rebuild_pickle(mf, req)
        if rebuilt is not None:
            return rebuilt
    meta = mf.metadata
    c, h, w, assumed_size = _module_input_size(module, meta, req)
    batch = getattr(module, "static_batch", None)
    out = probe(module, (c, h, w), assumed=assumed_size)
    num_classes = int(out.shape[1]) if out.dim() >= 2 else int(out.numel())
    spec = ModelSpec(f"{mf.kind}:{os.path.basename(mf.path)}", num_classes, c, (h, w))
    notes = [
        f"{mf.path}: {mf.description}{' ' + mf.where if mf.where else ''}, {num_classes} outputs"
        + (f"; input {c}x{h}x{w} assumed (give --in)" if assumed_size else f", input {c}x{h}x{w}")
        + (f", exported for batch {batch} only: runs {batch} at a time" if batch and batch > 1 else "")
        + (", exported for batch 1 only: runs one image at a time" if batch == 1 else "")
    ]
    pre, assumed = resolve_preprocess(spec, req, meta)
    return OpenedModel(
        module,
        spec,
        pre,
        None,
        mf.path,
        origin=mf.kind,
        notes=notes + assumed,
        source={"file": mf.path, "kind": mf.kind},
        dataset=str(meta.get("dataset") or ""),
    )


def _rebuild_pickle(mf, req: ModelRequest) -> OpenedModel | None:
    """A pickled module as the registry architecture its tensors fit, when that computes the same outputs."""
    from cnncli.models.detect import same_outputs

    try:
        opened = _open_state_dict(mf.path, mf.state_dict, req, mf.metadata, where=mf.where, kind="pickled module")
    except UsageError:
        if req.model:
            raise
        return None
    x = torch.randn(2, *opened.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            same = same_outputs(opened.model.eval()(x), mf.module(x))
        except Exception:
            same = False
    if not same and req.model:
        raise UsageError(
            f"{mf.path} does not compute what {req.model} computes with its weights",
            "leave out --model to run the pickled module as it is",
        )
    return opened if same else None


def _module_input_size(module: nn.Module, meta: dict, req: ModelRequest) -> tuple[int, int, int, bool]:
    """(C, H, W, assumed): --in, then the file's metadata, the program's example input; the channels of the first
    convolution and 224x224 as the last resort (said). Never the command's data: every command runs a file alike."""
    given = req.input_size
    if given and given[0]:
        return (*given, False)
    known = meta.get("input_size") or (meta.get("program_input") or [None])[1:]
    if known and all(isinstance(v, int) for v in known) and len(known) == 3:
        c, h, w = known
        return (c, *(given[1:] if given else (h, w)), False)
    c = next((int(p.shape[1]) for p in module.parameters() if p.dim() == 4), 3)
    if given:
        return (c, *given[1:], False)
    return (c, 224, 224, True)


# --------------------------------------------------------------------------------------------- preprocessing


def torchvision_defaults(name: str) -> dict:
    """A torchvision model's evaluation crop, mean/std and ImageNet class names, from its weights' metadata (no
    download)."""
    try:
        import torchvision.models as tvm

        weights = next(iter(tvm.get_model_weights(name)))
        t = weights.transforms()
        crop = getattr(t, "crop_size", None)
        return {
            "crop": (int(crop[0]), int(crop[0])) if crop else None,
            "mean": tuple(t.mean),
            "std": tuple(t.std),
            "classes": tuple(weights.meta.get("categories") or ()),
        }
    except Exception:
        return {}


def timm_defaults(name: str) -> dict:
    """A timm model's mean/std, input size, interpolation and crop from timm's own pretrained config (no
    download), as torchvision's are read from its weights: the augreg ViTs, inception_v3 and xception use 0.5/0.5,
    not ImageNet's. ImageNet's when timm has no config for the name."""
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:
            raise LookupError(name)
        return {
            "mean": tuple(float(v) for v in cfg.mean),
            "std": tuple(float(v) for v in cfg.std),
            "input_size": tuple(int(v) for v in cfg.input_size),
            "interpolation": cfg.interpolation,
            "crop_pct": cfg.crop_pct,
        }
    except Exception:
        return {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}


def resolve_preprocess(spec: ModelSpec, req: ModelRequest, meta: dict) -> tuple[Preprocess, list[str]]:
    """Mean, std and classes for a model: the command line, the file, the architecture's defaults, else no
    normalization; notes say where each came from when the file did not carry it. The one rule every command uses,
    so that eval's gate, predict and the exported file see the same pixels. Only class names may come from the
    dataset being evaluated (they name the outputs, and change no prediction)."""
    c = spec.in_channels
    info_source, arch = _arch_source(spec.name)
    tv = torchvision_defaults(arch) if info_source == "torchvision" else {}
    if info_source == "timm":
        tv = timm_defaults(arch)
    mean, mean_from = _first(
        (req.mean, "--mean"), (meta.get("mean"), "the file"), (tv.get("mean"), f"{arch}'s"), ((0.0,) * c, "none")
    )
    std, std_from = _first(
        (req.std, "--std"), (meta.get("std"), "the file"), (tv.get("std"), f"{arch}'s"), ((1.0,) * c, "none")
    )
    mean, std = _per_channel(mean, c, "--mean"), _per_channel(std, c, "--std")
    k = spec.num_classes
    classes, classes_from = _first(
        (req.classes, "--classes"),
        (meta.get("classes"), "the file"),
        (tv.get("classes") if k == 1000 else None, "ImageNet"),
        (req.dataset_classes if req.dataset_classes and len(req.dataset_classes) == k else None, "the dataset's"),
        ((), "none"),
    )
    if classes and len(classes) != k:
        raise UsageError(f"{len(classes)} class names for a model with {k} outputs", "give one name per output")
    notes = []
    if mean_from not in ("--mean", "the file") or std_from not in ("--std", "the file"):
        how = "no normalization" if mean_from == "none" else f"{mean_from} normalization"
        notes.append(
            f"assumed {how}: mean {_fmt(mean)}, std {_fmt(std)} (give --mean/--std if it was trained with others)"
        )
    if classes_from in ("ImageNet", "the dataset's"):
        notes.append(f"assumed {classes_from} class names (give --classes to name them)")
    pre = Preprocess(
        spec.input_size, tuple(float(v) for v in mean), tuple(float(v) for v in std), tuple(str(v) for v in classes)
    )
    return pre, notes


def _arch_source(name: str) -> tuple[str, str]:
    try:
        info = resolve(name) if ":" not in name or name.startswith(("tv:", "timm:", "torchvision:")) else None
    except UsageError:
        info = None
    return (info.source, info.name) if info else ("", name)


def _first(*options):
    return next((v, src) for v, src in options if v is not None and (len(v) > 0 or src == "none"))


def _per_channel(values, c: int, flag: str) -> tuple:
    values = tuple(values)
    if len(values) == 1 and c > 1:
        return values * c
    if len(values) != c:
        raise UsageError(f"{flag} needs 1 or {c} values for a {c}-channel model, got {len(values)}")
    return values


def _fmt(values) -> str:
    return ",".join(f"{v:g}" for v in values)


def default_output(model_arg: str, suffix: str) -> str:
    """MODEL with the format's suffix: runs/train/best.pt -> runs/train/best.onnx; a registry name -> NAME.onnx
    in the current folder (tv:resnet18 -> tv-resnet18.onnx; my_net.py:Net -> my_net-Net.onnx)."""
    import re

    if is_checkpoint_path(model_arg):
        return os.path.splitext(model_arg)[0] + suffix
    base = os.path.basename(model_arg).replace(".py:", "-")
    return re.sub(r"[^\w.-]+", "-", base).strip("-.") + suffix
