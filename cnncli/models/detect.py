"""Which architecture a state dict belongs to, from its tensors' names and shapes alone.

Every candidate of the registry (the built-in models, every torchvision classification model, timm's when it is
installed) is built on PyTorch's meta device, which allocates nothing, and its state dict's names compared with the
file's. Where the names agree, the shapes decide: a candidate is built twice more, with more classes and with more
input channels, to learn which dimensions follow those two numbers; the file's own values are read off them, and
the candidate rebuilt with them must give every tensor its exact shape. Built-in models whose layout follows the
image size (the CIFAR stem of resnet18 below 96 px, LeNet's first Linear) are tried at several sizes, so the
weights decide the layout.

Several candidates can fit the same tensors (torchvision's resnet18 and the built-in one at 224 px). When their
outputs on the same input agree they are one model and the first by preference is chosen (torchvision, then
built-in, then timm); when they disagree (a stride the weights cannot show) the file is ambiguous and the user
names the model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnncli.errors import UsageError
from cnncli.models.files import align_keys, key_variants

SMALL_SIZES = ((32, 32), (28, 28), (64, 64), (224, 224), (96, 96))  # layouts the built-in models are tried at
SOURCE_ORDER = {"torchvision": 0, "builtin": 1, "timm": 2}


@dataclass(frozen=True)
class Fit:
    """An architecture the file's tensors fit exactly, with the numbers read off them."""

    name: str  # qualified registry name (tv:resnet18, resnet18, timm:...)
    source: str
    num_classes: int
    in_channels: int
    build_size: tuple[int, int]  # the image size the layout was built at
    prefix: str = ""  # the wrapper prefix stripped from the file's keys


@dataclass
class Near:
    """A candidate that did not fit, for the error message."""

    name: str
    score: float  # share of names in common (Jaccard)
    missing: list[str] = field(default_factory=list)  # the candidate has them, the file does not
    unexpected: list[str] = field(default_factory=list)  # the file has them, the candidate does not
    shapes: list[str] = field(default_factory=list)  # same name, other shape


# ---------------------------------------------------------------------------------------- meta builds


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter and buffer lands on the meta device as it is registered (for builders that compute with
    tensors while they build, which `torch.device("meta")` cannot run)."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if param is not None:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        register_buffer(self, name, None if tensor is None else tensor.to("meta"), persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter, nn.Module.register_buffer = register_parameter, register_buffer


def build_on_meta(name: str, num_classes: int, in_channels: int, image_size) -> nn.Module:
    """A registry model with no memory behind its tensors."""
    from cnncli.models._factory import get_model, load_user_class, no_initialisation
    from cnncli.models._registry import is_user_model

    if is_user_model(name):  # imported first, as Python runs it: its top level must never run on the meta device
        load_user_class(name)  # (a training script's torch.save would write meta tensors over its file)
    with warnings.catch_warnings(), no_initialisation():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return get_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)
        except (NotImplementedError, RuntimeError):
            with _parameters_on_meta():
                return get_model(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size)


_shapes: dict[str, dict[str, tuple] | None] = {}
_cache = {"loaded": False, "dirty": False, "keep": set()}


def shapes_of(name: str, num_classes: int, in_channels: int, image_size, keep: bool = False) -> dict[str, tuple] | None:
    """{key: shape} of a registry model's state dict (cached in memory; on disk too with `keep`, for the default
    builds every detection compares against; None when it cannot be built that way)."""
    key = f"{name}|{num_classes}|{in_channels}|{image_size[0]}x{image_size[1]}"
    if not _cache["loaded"]:
        _load_cache()
    if key not in _shapes:
        try:
            model = build_on_meta(name, num_classes, in_channels, tuple(image_size))
            _shapes[key] = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        except Exception:  # a candidate that cannot be built at this size or channel count is not a candidate
            _shapes[key] = None
        _cache["dirty"] |= keep
    if keep:
        _cache["keep"].add(key)
    return _shapes[key]


# Building every candidate takes seconds; what they look like is kept on disk for the next run, in a file named
# after everything that could change it (torch, torchvision, timm and the built-in models' source).


def cache_path() -> str | None:
    import hashlib
    import importlib.metadata as md
    import os

    root = os.environ.get("CNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cnncli"
    )
    h = hashlib.sha256()
    for dist in ("torch", "torchvision", "timm"):
        try:
            h.update(f"{dist}={md.version(dist)};".encode())
        except md.PackageNotFoundError:
            pass
    models = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(models)):
        if name.endswith(".py"):
            with open(os.path.join(models, name), "rb") as f:
                h.update(f.read())
    return os.path.join(root, f"architectures-{h.hexdigest()[:16]}.json")


def _load_cache() -> None:
    import json

    _cache["loaded"] = True
    try:
        with open(cache_path()) as f:
            stored = json.load(f)
        _shapes.update({k: None if v is None else {n: tuple(s) for n, s in v.items()} for k, v in stored.items()})
        _cache["keep"].update(stored)
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no cache yet, or an unreadable one: it is rebuilt


def save_cache() -> None:
    """Keep what was built for the next run (a cache that cannot be written is no error)."""
    import json
    import os

    from cnncli.fileio import write_text

    if not _cache["dirty"]:
        return
    path = cache_path()
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        kept = {k: _shapes[k] for k in _cache["keep"] if k in _shapes}
        text = json.dumps({k: v if v is None else {n: list(s) for n, s in v.items()} for k, v in kept.items()})
        write_text(path, text)
        _cache["dirty"] = False
    except OSError:
        pass


# ------------------------------------------------------------------------------------------ candidates


@dataclass(frozen=True)
class Candidate:
    name: str
    source: str
    num_classes: int  # its default, the reference the others are read against
    in_channels: int
    sizes: tuple[tuple[int, int], ...]  # layouts to try, the preferred first


def candidates(input_size=None, only: str | None = None) -> list[Candidate]:
    """The registry's models as detection candidates (`only`: one name, as `--model NAME` gives it)."""
    from cnncli.models._registry import _torchvision_names, builtin_models, resolve

    infos = [resolve(only)] if only else list(builtin_models()) + [resolve("tv:" + n) for n in _torchvision_names()]
    out = []
    for info in infos:
        sizes = [tuple(info.input_size[1:])]
        if info.source in ("builtin", "file"):
            if input_size:
                sizes.insert(0, tuple(input_size[-2:]))
            sizes += [s for s in SMALL_SIZES if s not in sizes]
        nc, c = _user_numbers(only) if info.source == "file" else (info.num_classes, info.input_size[0])
        out.append(
            Candidate(
                info.qualified if info.source != "file" else only,
                info.source,
                nc or info.num_classes,
                c or info.input_size[0],
                tuple(dict.fromkeys(sizes)),
            )
        )
    return out


def _user_numbers(spec: str) -> tuple[int | None, int | None]:
    """(classes, channels) of a user's class that does not take them as arguments (`MyNet()` builds one network
    only): read off the network it builds, its last layer's outputs and its first convolution's inputs. None for
    a number the class takes (the weights decide it then)."""
    import inspect

    from cnncli.models._factory import load_user_class

    params = inspect.signature(load_user_class(spec)).parameters
    takes_c = any(k in params for k in ("in_channels", "in_chans"))
    if "num_classes" in params and takes_c:
        return None, None
    try:
        model = build_on_meta(spec, 10, 3, (32, 32))
    except Exception:
        return None, None
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    heads = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    c = None if takes_c or not convs else convs[0].in_channels
    nc = None
    if "num_classes" not in params and heads:
        nc = heads[-1].out_features if isinstance(heads[-1], nn.Linear) else heads[-1].out_channels
    return nc, c


def _key_sets(cand: Candidate) -> dict[frozenset, tuple[int, int]]:
    """The key-name sets a candidate has over its sizes, each with the first size that gives it."""
    out: dict[frozenset, tuple[int, int]] = {}
    for size in cand.sizes[:3]:  # the others are tried for the candidates whose names match
        shapes = shapes_of(cand.name, cand.num_classes, cand.in_channels, size, keep=True)
        if shapes is not None:
            out.setdefault(frozenset(shapes), size)
    return out


# ------------------------------------------------------------------------------------------------ fitting


def _read_off(a: dict, moved: dict, file: dict, step: int, base: int) -> int | None | bool:
    """The value of a constructor number (classes or channels) the file's shapes imply: dims that moved by `step`
    when the number moved by `step` follow it one to one (value = base + file - a). None: no dim follows it;
    False: the file contradicts itself."""
    found = None
    for k, sa in a.items():
        sb = moved[k]
        if sa == sb:
            continue
        sf = file[k]
        if len(sf) != len(sa):
            return False
        for da, db, df in zip(sa, sb, sf):
            if da == db:
                continue
            if (db - da) % step:  # the dim does not move in whole units per class (channel)
                return False
            unit = (db - da) // step
            if (df - da) % unit:
                return False
            value = base + (df - da) // unit
            if value < 1 or (found is not None and value != found):
                return False
            found = value
    return found


def fit_one(cand: Candidate, shapes: dict[str, tuple], size) -> Fit | Near:
    """Does the candidate at this layout size give exactly these shapes, for some classes and channels?"""
    a = shapes_of(cand.name, cand.num_classes, cand.in_channels, size, keep=True)
    if a is None or set(a) != set(shapes):
        return _near(cand.name, a or {}, shapes)
    if a == shapes:  # the defaults themselves
        return Fit(cand.name, cand.source, cand.num_classes, cand.in_channels, tuple(size))
    differ = {k for k in a if a[k] != shapes[k]}
    more_classes = shapes_of(cand.name, cand.num_classes + 7, cand.in_channels, size)
    nc = cand.num_classes if more_classes is None else _read_off(a, more_classes, shapes, 7, cand.num_classes)
    c = cand.in_channels
    if more_classes is None or not differ <= {k for k in a if a[k] != more_classes[k]}:  # not the head alone
        more_channels = shapes_of(cand.name, cand.num_classes, cand.in_channels + 2, size)
        c = cand.in_channels if more_channels is None else _read_off(a, more_channels, shapes, 2, cand.in_channels)
    if nc is False or c is False:
        return _near(cand.name, a, shapes)
    nc, c = nc or cand.num_classes, c or cand.in_channels
    expected = a if (nc, c) == (cand.num_classes, cand.in_channels) else shapes_of(cand.name, nc, c, size)
    if expected != shapes:
        return _near(cand.name, expected or a, shapes)
    return Fit(cand.name, cand.source, nc, c, tuple(size))


def _near(name: str, expected: dict, shapes: dict, compare_shapes: bool = True) -> Near:
    common = set(expected) & set(shapes)
    score = len(common) / max(1, len(set(expected) | set(shapes)))
    differ = [
        f"{k} {list(shapes[k])} (expects {list(expected[k])})"
        for k in expected
        if compare_shapes and k in shapes and tuple(expected[k]) != tuple(shapes[k])
    ]
    return Near(name, score, [k for k in expected if k not in shapes], [k for k in shapes if k not in expected], differ)


def find_fits(state: dict, input_size=None, only: str | None = None) -> tuple[list[Fit], list[Near]]:
    """Every candidate the state dict fits exactly (by preference), and the nearest misses (best first). timm's
    models (when timm is installed) are tried only when no built-in or torchvision model fits, and only those whose
    first convolution and classifier, as timm's configs name them, are in the file."""
    variants = key_variants(state)
    fits: list[Fit] = []
    near: list[Near] = []
    for cand in candidates(input_size, only):
        _try(cand, state, variants, fits, near)
    if not fits and only is None:
        for cand in timm_candidates(variants):
            _try(cand, state, variants, fits, near)
    save_cache()
    fits.sort(key=lambda f: SOURCE_ORDER.get(f.source, 3))
    near.sort(key=lambda n: -n.score)
    return fits, near


def _try(cand: Candidate, state: dict, variants, fits: list, near: list) -> None:
    sets = _key_sets(cand)
    for prefix, keys in variants:
        if frozenset(keys) not in sets:
            continue
        shapes = {k[len(prefix) :]: tuple(v.shape) for k, v in state.items()}
        for size in _sizes_for(cand, sets, frozenset(keys)):
            got = fit_one(cand, shapes, size)
            if isinstance(got, Fit):
                fits.append(Fit(got.name, got.source, got.num_classes, got.in_channels, got.build_size, prefix))
                return
            near.append(got)
        return
    best = max(sets, key=lambda s: max(len(s & set(k)) for _, k in variants), default=frozenset())
    if best:
        keys = max((k for _, k in variants), key=lambda k: len(best & set(k)))
        expected = shapes_of(cand.name, cand.num_classes, cand.in_channels, sets[best]) or {}
        near.append(_near(cand.name, expected, dict.fromkeys(keys, ()), compare_shapes=False))


def timm_candidates(variants) -> list[Candidate]:
    """timm models whose pretrained config names a first conv and a classifier the file has (none without timm)."""
    from cnncli.models._registry import _timm_available

    if not _timm_available():
        return []
    import timm
    from timm.models import get_pretrained_cfg

    names = set().union(*(set(k) for _, k in variants))
    out = []
    for name in timm.list_models():
        cfg = get_pretrained_cfg(name)
        if cfg is None:
            continue
        heads = cfg.classifier if isinstance(cfg.classifier, (list, tuple)) else [cfg.classifier]
        firsts = cfg.first_conv if isinstance(cfg.first_conv, (list, tuple)) else [cfg.first_conv]
        if all(f"{h}.weight" in names for h in heads if h) and any(f"{f}.weight" in names for f in firsts if f):
            size = tuple(cfg.input_size[1:]) if cfg.input_size else (224, 224)
            out.append(Candidate("timm:" + name, "timm", 1000, 3, (size,)))
    return out


def _sizes_for(cand: Candidate, sets: dict, keys: frozenset) -> list:
    """The layout sizes worth fitting: those whose key names are the file's (all sizes for built-in models, whose
    names rarely change with the size while their shapes do)."""
    return [s for s in cand.sizes if (shapes_of(cand.name, cand.num_classes, cand.in_channels, s) or {}).keys() == keys]


# ----------------------------------------------------------------------------------------------- choosing


def same_function(fits: list[Fit], state: dict, input_size, models: dict | None = None) -> list[list[Fit]]:
    """Group the fits by what they compute: each built with the file's weights and run on the same input (`models`,
    when given, receives each built model by name)."""
    from cnncli.models._factory import get_model

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *input_size, generator=g)
    groups: list[tuple[torch.Tensor | None, list[Fit]]] = []
    for fit in fits:
        try:
            model = get_model(
                fit.name, num_classes=fit.num_classes, in_channels=fit.in_channels, image_size=fit.build_size
            )
            model.load_state_dict(align_keys(state, model.state_dict())[0])
            if models is not None:
                models[fit.name] = model
            with torch.no_grad():
                out = model.eval()(x)
        except Exception:
            out = None
        for ref, members in groups:
            if ref is not None and out is not None and same_outputs(ref, out):
                members.append(fit)
                break
        else:
            groups.append((out, [fit]))
    return [members for out, members in groups if out is not None] or [fits[:1]]


def _layer_kinds(model) -> Counter:
    """A model's parameter-free structure, which the tensors of a state dict cannot show: its leaf layers by kind,
    with the stride of those that stride (`Conv2d stride 2`, `AvgPool2d`, `BlurPool2d`)."""
    kinds: Counter = Counter()
    for m in model.modules():
        if list(m.children()):
            continue
        stride = getattr(m, "stride", None)
        stride = stride if isinstance(stride, tuple) else (stride,) if isinstance(stride, int) else ()
        kinds[type(m).__name__ + (f" stride {stride[0]}" if stride and max(stride) > 1 else "")] += 1
    return kinds


def how_they_differ(models: list) -> str:
    """What sets architectures with the same tensors apart, in words: the layer kinds each has that the others
    lack (`tv:mobilenet_v2 has 1 more Conv2d stride 2`: a stride the weights cannot show)."""
    built = [(name, _layer_kinds(m)) for name, m in models if m is not None]
    if len(built) < 2:
        return ""
    common = built[0][1].copy()
    for _, kinds in built[1:]:
        common &= kinds
    parts = []
    for name, kinds in built:
        extra = kinds - common
        if extra:
            parts.append(f"{name} has " + ", ".join(f"{n} more {k}" for k, n in sorted(extra.items())[:4]))
    return "; ".join(parts) or "their layers are the same kinds, used differently (see cnn summary --model NAME)"


def same_outputs(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal outputs, relative to their scale (an untrained head's logits are all tiny)."""
    if a.shape != b.shape:
        return False
    scale = float(torch.maximum(a.abs().max(), b.abs().max()))
    return float((a - b).abs().max()) <= 1e-4 * scale + 1e-12


def detect(state: dict, input_size=None, *, what: str = "the state dict") -> Fit:
    """The architecture of a state dict; UsageError naming the nearest candidates when none or several fit."""
    fits, near = find_fits(state, input_size)
    if not fits:
        raise UsageError(
            f"{what} matches no known architecture{_nearest(near)}",
            "give its architecture with --model NAME (or file.py:Class)",
        )
    if len(fits) > 1:
        hw = tuple(input_size[-2:]) if input_size else fits[0].build_size
        size = (fits[0].in_channels, *hw)  # the tensors fix the channels; every fit has the same
        models: dict = {}
        groups = same_function(fits, state, size, models)
        if len(groups) > 1:
            names = ", ".join(g[0].name for g in groups)
            differ = how_they_differ([(g[0].name, models.get(g[0].name)) for g in groups])
            raise UsageError(
                f"{what} fits several architectures that compute different things at "
                f"{'x'.join(map(str, size))}: {names}" + (f"; where they differ: {differ}" if differ else ""),
                "choose one with --model NAME",
            )
        fits = groups[0]
    return fits[0]


def fit_named(name: str, state: dict, input_size=None, *, what: str = "the state dict") -> Fit:
    """`--model NAME` for a state dict: the named architecture, with the classes, channels and layout the weights
    have; UsageError with the first tensors that do not fit."""
    fits, near = find_fits(state, input_size, only=name)
    if fits:
        return fits[0]
    n = near[0] if near else Near(name, 0.0)
    detail = "; ".join(
        part
        for part in (
            _listed("missing", n.missing),
            _listed("unexpected", n.unexpected),
            _listed("other shape", n.shapes),
        )
        if part
    )
    raise UsageError(
        f"{what} does not fit {name}: {detail or 'its tensors differ'}",
        "leave out --model to detect the architecture, or give the right one",
    )


def _listed(what: str, items: list[str], n: int = 3) -> str:
    if not items:
        return ""
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return f"{what} {', '.join(items[:n])}{more}"


def _nearest(near: list[Near]) -> str:
    seen, parts = set(), []
    for n in near:
        if n.name in seen or len(parts) == 3:
            continue
        seen.add(n.name)
        first = n.shapes[:1] or [f"unexpected {k}" for k in n.unexpected[:1]] or [f"missing {k}" for k in n.missing[:1]]
        parts.append(f"{n.name} ({n.score:.0%} of names in common; first difference: {first[0] if first else '-'})")
    return "; nearest: " + "; ".join(parts) if parts else ""
