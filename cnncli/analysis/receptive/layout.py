"""What the rules reason with: a field and a layout per graph value, and how layouts move through reshapes.

A layout names each dimension of a tensor: the batch (`n`), features (`c`), image rows and columns (`h`, `w`), the
two flattened into tokens (`s`), a whole map flattened with its features (`f`, what a classifier's Linear reads), or
another mix (`x`, e.g. windows cut out of the map); a size-1 dimension is `1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx
from torch.fx.passes.shape_prop import TensorMetadata

from cnncli.analysis.arith import Field


class _Mark:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


GLOBAL = _Mark("GLOBAL")  # every input position reaches every unit
UNKNOWN = _Mark("UNKNOWN")  # an operation the arithmetic does not cover: measure it

SPATIAL = ("h", "w", "s", "f", "x")
WHOLE = ("s", "f")  # every position of the map


@dataclass
class Info:
    """What one FX node computes: its field (a Field, GLOBAL, UNKNOWN, or None for values that do not depend on the
    input) and the layout of its tensor."""

    field: object = None
    layout: tuple | None = None


def pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def shape_of(node) -> tuple | None:
    """The propagated shape of a graph value (None for non-tensors and constants)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


def is_tensor(node) -> bool:
    return isinstance(node, torch.fx.Node) and node.meta.get("tensor_meta") is not None


def join(fields) -> object:
    """The field of a value computed from values with these fields."""
    fs = [f for f in fields if f is not None]
    if not fs:
        return None
    if any(f is GLOBAL for f in fs):
        return GLOBAL
    if any(f is UNKNOWN for f in fs):
        return UNKNOWN
    out = fs[0]
    for f in fs[1:]:
        if f.jump != out.jump:
            return UNKNOWN
        out = out.union(f)
    return out


def through(f, *args, **kw):
    """A sliding window applied to a field (GLOBAL, UNKNOWN and None pass unchanged)."""
    return f.through(*args, **kw) if isinstance(f, Field) else f


def made_global(f):
    """A reduction over every position: global, unless nothing depends on the input."""
    return None if f is None else GLOBAL


def unknown(f):
    return f if f is None or f is GLOBAL else UNKNOWN


def spatial(label) -> bool:
    return label in SPATIAL


def over_positions(f, label):
    """The field after mixing along a dimension labelled `label` (attention over its positions, a softmax): global
    over a whole map, measured over part of one (windows, one axis), unchanged over features; unknown without a
    label."""
    if label is None:
        return unknown(f)
    return made_global(f) if label in WHOLE else unknown(f) if spatial(label) else f


def dim(d, ndim: int) -> int:
    return d + ndim if d < 0 else d


def dims(arg, ndim: int) -> list[int] | None:
    if arg is None:
        return None
    if isinstance(arg, int):
        return [dim(arg, ndim)]
    if isinstance(arg, (list, tuple)) and all(isinstance(d, int) for d in arg):
        return [dim(d, ndim) for d in arg]
    return None


def relabel(layout, shape) -> tuple | None:
    """A layout with size-1 image axes marked `1` (they hold one position)."""
    if layout is None or shape is None or len(layout) != len(shape):
        return layout
    return tuple("1" if (d == 1 and lab in SPATIAL) else lab for lab, d in zip(layout, shape))


def last_to(lay, label) -> tuple | None:
    return None if lay is None else lay[:-1] + (label,)


def shape_layout(shape) -> tuple | None:
    """The layout of a value built from constants only: no image axes."""
    return None if shape is None else tuple("1" if d == 1 else "c" for d in shape)


def shape_layout_like(lay, in_shape, out_shape) -> tuple | None:
    """Layout after squeeze/unsqueeze/expand: the dims of size > 1 keep their labels in order."""
    if lay is None or in_shape is None or out_shape is None:
        return lay
    if len(in_shape) == len(out_shape):
        return lay
    labels = [lab for lab, d in zip(lay, in_shape) if d != 1]
    return tuple(labels.pop(0) if d != 1 and labels else ("1" if d == 1 else "n") for d in out_shape)


def _merge(labels) -> str:
    labels = [lab for lab in labels if lab != "1"]
    if not labels:
        return "1"
    if all(lab == labels[0] for lab in labels) and labels[0] in ("n", "c"):
        return labels[0]
    if labels == ["h", "w"]:
        return "s"
    if labels in (["h"], ["w"], ["s"], ["f"], ["x"]):
        return labels[0]
    rest = [lab for lab in labels if lab != "c"]
    if rest in (["h", "w"], ["s"], ["f"]):
        return "f"  # features and every position: a flattened map
    return "x"


def _dim_groups(a, b) -> list[tuple[list[int], list[int]]] | None:
    """Consecutive groups (dims of shape a, dims of shape b) whose sizes multiply to the same number: how a reshape
    merges and splits dimensions; None where the shapes do not line up that way."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        gi: list[int] = []
        gj: list[int] = []
        pa, pb = 1, 1
        while True:
            if i < len(a) and (not gi or pa < pb):
                gi.append(i)
                pa, i = pa * a[i], i + 1
            elif j < len(b) and (not gj or pb < pa):
                gj.append(j)
                pb, j = pb * b[j], j + 1
            else:
                break
        if pa != pb:
            return None
        groups.append((gi, gj))
    return groups


def reshape_layout(layout, in_shape, out_shape) -> tuple | None:
    """Layout after a view/reshape/flatten, by matching groups of input and output dims with equal products."""
    if layout is None or in_shape is None or out_shape is None:
        return None
    groups = _dim_groups(in_shape, out_shape)
    if groups is None:
        return None
    out: list[str] = []
    n_out = len(out_shape)
    for gi, gj in groups:
        merged = _merge([layout[k] for k in gi]) if gi else "1"
        if len(gj) == 1:
            out.append(merged)
            continue
        sizes = [out_shape[k] for k in gj]
        if merged in ("n", "c", "1"):
            out.extend(merged if s != 1 else "1" for s in sizes)
        elif merged == "s" and len([s for s in sizes if s != 1]) == 2:
            labels = iter(("h", "w"))
            out.extend(next(labels) if s != 1 else "1" for s in sizes)
        else:
            out.extend("x" if s != 1 else "1" for s in sizes)
    return tuple(out[:n_out]) if len(out) >= n_out else None
