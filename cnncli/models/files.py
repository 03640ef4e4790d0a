"""Model files as people have them: what is inside one, read without running code from it.

`read_model_file(path)` tells the kinds apart by their contents, not their names:

- a cnncli checkpoint (written by `cnn train` / `cnn fcn`);
- a state dict: plain `torch.save(model.state_dict())`, or wrapped in a dict under `state_dict`,
  `model_state_dict`, `model`, `state_dict_ema`, `model_ema` or `module` (Lightning, timm, the PyTorch tutorials),
  with the `module.` (DDP), `model.` (Lightning) and `_orig_mod.` (torch.compile) prefixes left for `align_keys`;
- a TorchScript archive (`torch.jit.save`) and a torch.export program (`torch.export.save`, `.pt2`): both are code
  (TorchScript runs its own code at load, `__setstate__`, and in forward; torch.export.load unpickles parts of the
  archive with weights_only=False), so they are loaded by their own loaders only with `--trust-code`;
- an ONNX file (for the commands that can run one);
- a whole pickled module (`torch.save(model)`): refused, because unpickling it runs code named by the file, unless
  the user passed `--trust-code` (or its old name `--trust-pickle`).

Every file passes the reading gate first (`fileio.check_input`: a regular file, never a FIFO or a device).

Everything else is read with `torch.load(weights_only=True)`: tensors and plain values only. A few harmless types
that training scripts commonly leave in their checkpoints (argparse.Namespace, numpy scalars) are allowed too.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnncli.checkpoint import pickled_from_script_hint, safe_load, unreadable
from cnncli.errors import UsageError

# where wrapped checkpoints keep their weights, in the order they are preferred (the EMA copy last)
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "state_dict_ema", "model_ema")
# prefixes that wrappers add to every key: DDP, Lightning, torch.compile
PREFIXES = ("module.", "model.", "_orig_mod.")
PT2_METADATA = "cnncli.json"  # the extra file in a .pt2 where cnn export keeps the metadata
KINDS = ("checkpoint", "state_dict", "torchscript", "program", "onnx", "pickle")


@dataclass
class ModelFile:
    """What a model file holds. Exactly one of checkpoint / state_dict / module / (onnx: path) is set."""

    path: str
    kind: str  # one of KINDS
    checkpoint: object | None = None  # cnncli.checkpoint.Checkpoint
    state_dict: dict | None = None  # kind state_dict (and pickle, as the module's weights)
    module: nn.Module | None = None  # torchscript, program (its runnable module), pickle
    metadata: dict = field(default_factory=dict)  # what the file says about its inputs (classes, input_size...)
    where: str = ""  # "under 'model_state_dict'" for wrapped state dicts

    @property
    def description(self) -> str:
        return {
            "checkpoint": "a cnncli checkpoint",
            "state_dict": "a state dict",
            "torchscript": "a TorchScript archive",
            "program": "a torch.export program",
            "onnx": "an ONNX model",
            "pickle": "a pickled module",
        }[self.kind]


def read_model_file(path: str, *, trust_pickle: bool = False, replaceable: bool = False) -> ModelFile:
    """Open any model file (see the module docstring); UsageError for anything unreadable or refused.
    `trust_pickle` is --trust-code: the file may run code (a whole pickle, TorchScript, a .pt2 program)."""
    from cnncli.errors import reading, shown
    from cnncli.fileio import check_input, is_onnx_file

    check_input(path, "model file", kind="model", replaceable=replaceable)
    if is_onnx_file(path):
        return ModelFile(path, "onnx")
    names = _zip_names(path)
    kind = (
        "program"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names)
        else "torchscript"
        if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names)
        else None
    )
    if kind is not None and not trust_pickle:
        what = "a torch.export program" if kind == "program" else "a TorchScript archive"
        raise UsageError(
            f"refusing to load {shown(path)}: it is {what}, which carries code that runs when it is loaded or run",
            "pass --trust-code if you trust where the file came from, or give the state dict it was "
            "made from (docs/security.md)",
        )
    with reading(
        f"cannot read model file {shown(path)}", "expected a checkpoint, state dict, TorchScript, .pt2 or .onnx file"
    ):
        if kind == "program":
            return _read_program(path)
        if kind == "torchscript":
            return _read_torchscript(path)
        obj = _load_plain(path, trust_pickle)
        return _classify(path, obj)


def _zip_names(path: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


# ------------------------------------------------------------------------------------------ torch.load


def _load_plain(path: str, trust_pickle: bool):
    """torch.load, weights only unless the user trusts the file."""
    return _load_trusted(path) if trust_pickle else safe_load(path, "model file", _EXPECTED)


def _load_trusted(path: str):
    """torch.load(weights_only=False): the user said the file may run code. A class the pickle names that cannot be
    imported is named in the error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise UsageError(
            f"cannot load {path}: a class it was pickled with cannot be imported: {e}",
            pickled_from_script_hint(str(e))
            or "run cnn where that module is importable (PYTHONPATH), or save a state dict",
        ) from None
    except Exception as e:
        raise _unreadable(path, e) from None


_EXPECTED = "expected a checkpoint, state dict, TorchScript, .pt2 or .onnx file"


def _unreadable(path: str, e: Exception) -> UsageError:
    return unreadable(path, "model file", _EXPECTED, e)


# ------------------------------------------------------------------------------------------ what it is


def _is_tensor_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _classify(path: str, obj) -> ModelFile:
    from cnncli.checkpoint import FORMAT, Checkpoint

    if isinstance(obj, nn.Module):
        return ModelFile(path, "pickle", module=obj, state_dict=obj.state_dict())
    if isinstance(obj, dict) and (
        obj.get("format") == FORMAT
        or ("model" in obj and "state_dict" in obj and isinstance(obj.get("model"), dict) and "name" in obj["model"])
    ):
        return ModelFile(path, "checkpoint", checkpoint=Checkpoint.from_dict(obj, path))
    if _is_tensor_dict(obj):
        return ModelFile(path, "state_dict", state_dict=dict(obj), metadata=_file_facts({}))
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):  # a trusted pickle that wraps the module (Ultralytics, timm EMA)
                return ModelFile(path, "pickle", module=inner, state_dict=inner.state_dict(), where=f"under {key!r}")
            if _is_tensor_dict(inner):
                return ModelFile(
                    path, "state_dict", state_dict=dict(inner), metadata=_file_facts(obj), where=f"under {key!r}"
                )
    what = (
        f"a dict with keys {', '.join(map(repr, list(obj)[:6]))}"
        if isinstance(obj, dict)
        else f"a {type(obj).__name__}"
    )
    raise UsageError(
        f"{path} holds no model weights ({what})",
        "expected a state dict, possibly under " + ", ".join(map(repr, WRAPPER_KEYS[:4])),
    )


def _file_facts(obj: dict) -> dict:
    """Class names a wrapped checkpoint may carry next to its weights."""
    facts = {}
    for key in ("classes", "class_names"):
        names = obj.get(key)
        if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
            facts["classes"] = list(names)
            break
    return facts


# ------------------------------------------------------------------------------------ TorchScript, torch.export


def _read_torchscript(path: str) -> ModelFile:
    """torch.jit.load: TorchScript's own format (TorchScript code, not Python, and its own restricted unpickler)."""
    try:
        module = torch.jit.load(path, map_location="cpu")
    except Exception as e:
        raise _unreadable(path, e) from None
    return ModelFile(path, "torchscript", module=module.eval())


def _read_program(path: str) -> ModelFile:
    """torch.export.load: a serialized graph and its weights; the metadata cnn export wrote, if any."""
    import json
    import logging
    import warnings

    extra = {PT2_METADATA: ""}
    logger = logging.getLogger("torch.export")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # a bad archive is logged with a traceback before the exception says it all
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.load(path, extra_files=extra)
            module = program.module()
    except Exception as e:
        raise _unreadable(path, e) from None
    finally:
        logger.setLevel(level)
    meta = {}
    try:
        meta = json.loads(extra[PT2_METADATA]) if extra[PT2_METADATA] else {}
    except ValueError:
        pass
    meta = meta if isinstance(meta, dict) else {}
    meta.setdefault("program_input", _program_input(program))
    return ModelFile(path, "program", module=ProgramModule(module, meta["program_input"]), metadata=meta)


class ProgramModule(nn.Module):
    """A torch.export program's module, usable like any model: its graph is fixed in eval mode already, and
    `.train()`/`.eval()` (which the program's module refuses) only set the flag."""

    def __init__(self, module: nn.Module, input_shape: list | None = None):
        super().__init__()
        self.program = module
        self.input_shape = list(input_shape or [])  # as exported: ints are fixed, None dynamic

    @property
    def static_batch(self) -> int | None:
        """The batch size the program was exported for, when it takes no other."""
        return self.input_shape[0] if self.input_shape and isinstance(self.input_shape[0], int) else None

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        """A program exported for one batch size takes any batch: in pieces of that size, the last one padded with
        zeros (its outputs dropped), as `torch.export.export(model, (torch.randn(1, ...),))` programs need."""
        n = self.static_batch
        if n is None or x.dim() == 0 or x.shape[0] == n:
            return self.program(x)
        outs = []
        for piece in x.split(n):
            short = n - piece.shape[0]
            if short:
                piece = torch.cat([piece, piece.new_zeros(short, *piece.shape[1:])])
            outs.append(self.program(piece)[: n - short])
        return torch.cat(outs)


def _program_input(program) -> list:
    """The shape a program's first input was exported with: ints for static dims, None for dynamic ones."""
    user = list(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and user and node.name == user[0]:
            val = node.meta.get("val")
            if val is not None:
                return [int(d) if isinstance(d, int) else None for d in val.shape]
    return []


def weights_of(mf: ModelFile) -> tuple[dict, str]:
    """The state dict inside any model file (for --weights), and a note saying where it was found."""
    if mf.kind == "checkpoint":
        return mf.checkpoint.state_dict, " (cnncli checkpoint)"
    if mf.kind == "onnx":
        raise UsageError(f"cannot take weights from the ONNX file {mf.path}", "give a .pt state dict or checkpoint")
    state = mf.state_dict if mf.state_dict is not None else mf.module.state_dict()
    return state, f" ({mf.description}{' ' + mf.where if mf.where else ''})"


# --------------------------------------------------------------------------------------------- key names


def key_variants(keys) -> list[tuple[str, list[str]]]:
    """The ways a state dict's keys may be meant: as they are, then with each wrapper prefix that every key carries
    stripped (repeatedly: `module._orig_mod.`). Returns (prefix stripped, keys)."""
    out = [("", list(keys))]
    current, stripped = list(keys), ""
    for _ in range(4):
        prefix = next((p for p in PREFIXES if current and all(k.startswith(p) for k in current)), None)
        if prefix is None:
            break
        current = [k[len(prefix) :] for k in current]
        stripped += prefix
        out.append((stripped, current))
    return out


def align_keys(state: dict, expected) -> tuple[dict, str]:
    """The state dict with the prefix stripped that makes its keys match `expected` best; (state, prefix)."""
    expected = set(expected)
    best = max(key_variants(state), key=lambda v: len(expected.intersection(v[1])))
    prefix = best[0]
    return ({k[len(prefix) :]: v for k, v in state.items()} if prefix else dict(state)), prefix
