"""The one model registry every command resolves models through (torchvision `_api.py` / timm style).

Names resolve in this order: a `path/to/file.py:ClassName` user model, a built-in name, a family name
(`resnet` -> `resnet18`), `tv:NAME` / `timm:NAME`, then any torchvision classification model by its bare
name, then timm's when timm is installed. Unknown names raise UsageError with the closest matches.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from cnncli.errors import UsageError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model without building it."""

    name: str
    family: str
    source: str  # builtin | torchvision | timm | file
    input_size: tuple[int, int, int] = (3, 224, 224)  # default (C, H, W)
    num_classes: int = 1000
    builder: Callable | None = field(default=None, compare=False, repr=False)
    description: str = ""

    @property
    def qualified(self) -> str:
        return {"torchvision": "tv:", "timm": "timm:"}.get(self.source, "") + self.name


_REGISTRY: dict[str, ModelInfo] = {}
_FAMILY_DEFAULT: dict[str, str] = {}


def register_model(*, family: str, input_size=(3, 224, 224), num_classes: int = 1000, default: bool = False):
    """Register a builder `fn(*, num_classes, in_channels, image_size) -> nn.Module` under its function name."""

    def deco(fn: Callable) -> Callable:
        name = fn.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = ModelInfo(name, family, "builtin", tuple(input_size), num_classes, fn, doc[0] if doc else "")
        if default or family not in _FAMILY_DEFAULT:
            _FAMILY_DEFAULT[family] = name
        return fn

    return deco


# The built-in families register themselves when `cnncli.models` (the package) is imported, which Python does
# before any of its modules, this one included: the registry never imports them (no import cycle).


def builtin_models() -> list[ModelInfo]:
    return list(_REGISTRY.values())


def family_defaults() -> dict[str, str]:
    return dict(_FAMILY_DEFAULT)


# ------------------------------------------------------------------------------------- torchvision/timm


def _torchvision_names() -> list[str]:
    import torchvision.models as tvm

    return sorted(tvm.list_models(module=tvm))


def _torchvision_info(name: str) -> ModelInfo:
    return ModelInfo(
        name,
        _tv_family(name),
        "torchvision",
        (3, 224, 224) if not name.startswith("inception") else (3, 299, 299),
        1000,
        None,
        "torchvision classification model",
    )


def _tv_family(name: str) -> str:
    import re

    return re.sub(r"[_\d].*$", "", name) or name


def _timm_available() -> bool:
    return importlib.util.find_spec("timm") is not None


def _timm_names() -> list[str]:
    if not _timm_available():
        return []
    import timm

    return list(timm.list_models())


def torchvision_params(name: str) -> int | None:
    """Parameter count from torchvision's weight metadata (no model is built)."""
    import torchvision.models as tvm

    try:
        w = tvm.get_model_weights(name)
        return int(next(iter(w)).meta["num_params"])
    except Exception:
        return None


# ------------------------------------------------------------------------------------------ resolve


def is_user_model(name: str) -> bool:
    return ".py:" in name


def resolve(name: str) -> ModelInfo:
    """The ModelInfo for a name, family, `tv:`/`timm:` name or `file.py:Class`; UsageError if unknown."""
    if is_user_model(name):
        path, cls = name.rsplit(":", 1)
        if not os.path.lexists(path):
            raise UsageError(f"model file not found: {path}", "give path/to/file.py:ClassName")
        from cnncli.fileio import check_input

        check_input(path, "Python file", kind="text")
        return ModelInfo(name, cls, "file", (3, 32, 32), 10, None, f"user model {cls} from {path}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _FAMILY_DEFAULT:
        return _REGISTRY[_FAMILY_DEFAULT[name]]
    if name.startswith("tv:") or name.startswith("torchvision:"):
        bare = name.split(":", 1)[1]
        if bare in _torchvision_names():
            return _torchvision_info(bare)
        raise _unknown(name, ["tv:" + n for n in _torchvision_names()])
    if name.startswith("timm:"):
        bare = name.split(":", 1)[1]
        if not _timm_available():
            raise UsageError(f"unknown model {name!r}", "timm is not installed: pip install timm")
        if bare in _timm_names():
            return ModelInfo(bare, _tv_family(bare), "timm", _timm_input_size(bare), 1000, None, "timm model")
        raise _unknown(name, ["timm:" + n for n in _timm_names()])
    tv = _torchvision_names()
    if name in tv:
        return _torchvision_info(name)
    if _timm_available() and name in _timm_names():
        return ModelInfo(name, _tv_family(name), "timm", _timm_input_size(name), 1000, None, "timm model")
    raise _unknown(name, list(_REGISTRY) + list(_FAMILY_DEFAULT) + tv)


def _timm_input_size(name: str) -> tuple[int, int, int]:
    """The input size timm's pretrained config gives the model (inception_v3: 299), else 3x224x224."""
    try:
        import timm

        cfg = timm.get_pretrained_cfg(name)
        return tuple(int(v) for v in cfg.input_size) if cfg is not None else (3, 224, 224)
    except Exception:
        return (3, 224, 224)


def _unknown(name: str, candidates: list[str]) -> UsageError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = ("did you mean " + ", ".join(close) + "? " if close else "") + "see `cnn models`"
    return UsageError(f"unknown model {name!r}", hint)


def list_models(pattern: str = "*", source: str = "builtin") -> list[ModelInfo]:
    """Models whose name matches an fnmatch pattern; source builtin|torchvision|timm|all."""
    if source not in ("builtin", "torchvision", "timm", "all"):
        raise UsageError(f"unknown source {source!r}", "use builtin, torchvision, timm or all")
    out: list[ModelInfo] = []
    if source in ("builtin", "all"):
        out += [m for m in builtin_models() if fnmatch.fnmatch(m.name, pattern)]
    if source in ("torchvision", "all"):
        out += [
            _torchvision_info(n)
            for n in _torchvision_names()
            if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch("tv:" + n, pattern)
        ]
    if source in ("timm", "all"):
        out += [
            ModelInfo(n, _tv_family(n), "timm", (3, 224, 224), 1000, None, "timm model")
            for n in _timm_names()
            if fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch("timm:" + n, pattern)
        ]
    return out
