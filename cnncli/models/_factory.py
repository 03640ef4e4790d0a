"""Building a model from the registry's names (timm `_factory.py` style): built-in builders, torchvision, timm,
and a user's `path/to/file.py:ClassName`, adapted to the data's channels, classes and image size."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import os
import sys

from cnncli.errors import UsageError
from cnncli.models._manipulate import adapt_in_channels
from cnncli.models._registry import ModelInfo, resolve, torchvision_params


def get_model(
    name: str,
    *,
    num_classes: int | None = None,
    in_channels: int | None = None,
    image_size: tuple[int, int] | None = None,
):
    """Build a model by name, adapted to the data's channels, classes and image size. No weights are downloaded."""
    info = resolve(name)
    nc = num_classes or info.num_classes
    c = in_channels or info.input_size[0]
    hw = tuple(image_size) if image_size else tuple(info.input_size[1:])
    if info.source == "builtin":
        return info.builder(num_classes=nc, in_channels=c, image_size=hw)
    if info.source == "torchvision":
        import torchvision.models as tvm

        model = tvm.get_model(info.name, weights=None, num_classes=nc)
        return adapt_in_channels(model, c) if c != 3 else model
    if info.source == "timm":
        import timm

        return timm.create_model(info.name, pretrained=False, num_classes=nc, in_chans=c)
    return _build_user_model(name, num_classes=nc, in_channels=c, image_size=hw)


def load_user_class(spec: str):
    """Import `path/to/file.py:ClassName`; a file that fails to import is UsageError naming file and reason."""
    from cnncli.errors import shown
    from cnncli.fileio import check_input

    path, cls_name = spec.rsplit(":", 1)
    if not os.path.lexists(path):
        raise UsageError(f"model file not found: {shown(path)}", "give path/to/file.py:ClassName")
    check_input(path, "Python file", kind="text")
    st = os.stat(path)
    from cnncli.errors import command_id

    # once per command (and again when the file changed): a training script's top level runs once, not per build
    key = (os.path.realpath(path), st.st_mtime_ns, st.st_size, command_id())
    module = _user_modules.get(key)
    if module is None:  # imported once per process, however many times the model is built
        module = _import_file(path)
        _user_modules[key] = module
    if not hasattr(module, cls_name):
        raise UsageError(f"{shown(path)} has no {shown(cls_name, 80)!r}", "give path/to/file.py:ClassName")
    cls = getattr(module, cls_name)
    import torch.nn as nn

    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        what = f"a {type(cls).__name__}" if not isinstance(cls, type) else f"the class {cls.__name__}"
        raise UsageError(
            f"{shown(spec)} is not a torch.nn.Module class ({what})", "give a class that subclasses torch.nn.Module"
        )
    return cls


_user_modules: dict = {}


def _import_file(path: str):
    """Import a user's Python file as a module: what its top level runs is said first, and what it prints goes to
    stderr (stdout may carry --json); a file that fails to import is a UsageError naming the reason."""
    from cnncli.errors import raise_if_interrupted, shown

    mod_name = "cnncli_user_" + os.path.splitext(os.path.basename(path))[0]
    spec_ = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec_)
    work = _top_level_work(path)
    if work:
        lines = ", ".join(map(str, work[:5])) + (" ..." if len(work) > 5 else "")
        sys.stderr.write(
            f"note: importing {shown(path)} runs its top-level code (line {lines}), once; put it under "
            '`if __name__ == "__main__":` to import only the model\n'
        )
    try:
        sys.modules[mod_name] = module
        with contextlib.redirect_stdout(sys.stderr):  # what the script prints never mixes with --json output
            spec_.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # a file that calls sys.exit() at import is a broken file, not an exit
        sys.modules.pop(mod_name, None)
        raise_if_interrupted()
        raise UsageError(
            f"cannot import {shown(path)}: {type(e).__name__}: {shown(e)}", "fix the file or its imports"
        ) from None
    return module


def _top_level_work(path: str) -> list[int]:
    """Lines of a Python file's top level that do work when it is imported (loops, with-blocks, calls as
    statements, an `if` that is not the `__main__` guard): a training script with its model class in it."""
    import ast

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return []  # the import itself says what is wrong
    work = []
    for node in tree.body:
        if isinstance(node, ast.If):
            t = node.test
            guard = (
                isinstance(t, ast.Compare)
                and isinstance(t.left, ast.Name)
                and t.left.id == "__name__"
                and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in t.comparators)
            )
            if not guard:
                work.append(node.lineno)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            work.append(node.lineno)
        elif isinstance(node, ast.Expr) and isinstance(node.value, (ast.Call, ast.Await)):
            work.append(node.lineno)
    return work


def _build_user_model(spec: str, *, num_classes: int, in_channels: int, image_size):
    cls = load_user_class(spec)
    params = inspect.signature(cls).parameters
    kwargs = {}
    for key, value in (
        ("num_classes", num_classes),
        ("in_channels", in_channels),
        ("in_chans", in_channels),
        ("image_size", image_size),
    ):
        if key in params:
            kwargs[key] = value
    try:
        model = cls(**kwargs)
    except Exception as e:
        raise UsageError(f"cannot build {spec}: {type(e).__name__}: {e}", "check the constructor") from None
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise UsageError(
            f"{spec} is not a torch.nn.Module (it built a {type(model).__name__})",
            "give a class that subclasses torch.nn.Module",
        )
    return model


def count_params(info: ModelInfo) -> int | None:
    """Parameters at the model's default size, built on the meta device (no memory, no weights)."""
    import torch

    if info.source == "torchvision":
        return torchvision_params(info.name)
    try:
        with torch.device("meta"), no_initialisation():
            m = get_model(info.qualified)
        return sum(p.numel() for p in m.parameters())
    except Exception:
        return None


@contextlib.contextmanager
def no_initialisation():
    """torch.nn.init's in-place initialisers do nothing while a model is built on the meta device: there is no value
    to set, and on meta each of them still runs its decomposition through Python (half of a meta build's time)."""
    import torch.nn.init as init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {n: getattr(init, n) for n in names}

    def unchanged(tensor, *args, **kwargs):
        return tensor

    for n in names:
        setattr(init, n, unchanged)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)
