"""Convolution and pooling arithmetic in pure Python (stdlib only).

The textbook formulas, with the same conventions as ``torch.nn``:

* convolution / pooling:  ``o = floor((i + 2p - d(k-1) - 1) / s) + 1``
  (pooling with ``ceil_mode`` rounds up, but the last window must start inside the input or its left padding)
* transposed convolution: ``o = (i-1)s - 2p + d(k-1) + output_padding + 1``
* parameters of a convolution: ``(k_h*k_w*C_in/groups + 1) * C_out`` (no ``+1`` without bias)

Receptive fields follow the usual recursion over layers (per axis):
``rf_out = rf_in + (k_eff - 1) * jump_in``, ``jump_out = jump_in * s``,
``start_out = start_in + ((k_eff - 1)/2 - p) * jump_in`` where ``start`` is the input coordinate of the
centre of the first output cell's window.  This module serves ``cnn shape`` and the receptive-field
figures of ``cnn summary`` and ``cnn fcn``; it never imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from dataclasses import field as dc_field
from fractions import Fraction

from cnncli.errors import ArithError, UsageError

Pair = tuple[int, int]

__all__ = [
    "Pair",
    "Field",
    "Layer",
    "parse_size",
    "parse_pair",
    "parse_padding",
    "conv_out",
    "pool_out",
    "conv_transpose_out",
    "conv2d",
    "pool2d",
    "conv_transpose2d",
    "linear",
    "parse_layers",
    "run_layers",
    "LAYER_OPS",
    "totals",
]

_SIZE_RE = re.compile(r"^\s*(\d+)(?:\s*[x×,]\s*(\d+))?(?:\s*[x×,]\s*(\d+))?\s*$")


MAX_DIGITS = 18  # sizes beyond int64 are typos, and Python refuses int() of 4,300+ digits with a raw ValueError


def _number(digits: str, text) -> int:
    if len(digits.lstrip("-")) > MAX_DIGITS:
        raise UsageError(f"number too large in {str(text)[:40]!r}", f"at most {MAX_DIGITS} digits")
    return int(digits)


def parse_size(text: str | int, *, default_channels: int | None = None) -> tuple[int | None, int, int]:
    """Parse ``CxHxW``, ``HxW`` or ``N`` (square) into ``(C, H, W)``; C is ``default_channels`` when absent."""
    if isinstance(text, int):
        text = str(text)
    m = _SIZE_RE.match(str(text))
    if not m:
        raise UsageError(f"malformed size {text!r}", "use CxHxW, HxW or N, e.g. 3x32x32")
    parts = [_number(g, text) for g in m.groups() if g is not None]
    if any(v < 1 for v in parts):
        raise UsageError(f"malformed size {text!r}", "every dimension must be at least 1")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return default_channels, parts[0], parts[1]
    return default_channels, parts[0], parts[0]


def parse_pair(text: str | int | tuple, what: str = "value", *, minimum: int = 1) -> Pair:
    """Parse ``N`` or ``HxW`` into ``(h, w)``; every entry must be at least ``minimum``."""
    if isinstance(text, tuple):
        h, w = text
    elif isinstance(text, int):
        h = w = text
    else:
        m = re.match(r"^\s*(-?\d+)\s*(?:[x×,]\s*(-?\d+)\s*)?$", str(text))
        if not m:
            raise UsageError(f"malformed {what} {text!r}", "use N or HxW, e.g. 3 or 3x5")
        h = _number(m.group(1), text)
        w = _number(m.group(2), text) if m.group(2) is not None else h
    if h < minimum or w < minimum:
        raise ArithError(f"{what} must be at least {minimum}, got {text}")
    return h, w


def parse_padding(text: str | int | tuple) -> Pair | str:
    """Parse a padding: ``N``, ``HxW``, ``same`` or ``valid``."""
    if isinstance(text, str) and text.strip().lower() in ("same", "valid"):
        return text.strip().lower()
    return parse_pair(text, "padding", minimum=0)


# ----------------------------------------------------------------------------------------- 1-D formulas


def conv_out(i: int, k: int, s: int = 1, p: int = 0, d: int = 1, *, axis: str = "") -> int:
    """Output size of a convolution along one axis (``torch.nn.Conv2d``)."""
    _check_positive(k=k, s=s, d=d)
    if p < 0:
        raise ArithError(f"padding must be >= 0, got {p}")
    eff = d * (k - 1) + 1
    if i + 2 * p < eff:
        raise ArithError(
            f"kernel{_ax(axis)} (effective size {eff}) is larger than the padded input ({i + 2 * p})",
            "use a smaller kernel or dilation, or more padding",
        )
    return (i + 2 * p - d * (k - 1) - 1) // s + 1


def pool_out(
    i: int, k: int, s: int | None = None, p: int = 0, d: int = 1, ceil_mode: bool = False, *, axis: str = ""
) -> int:
    """Output size of max/avg pooling along one axis (``torch.nn.MaxPool2d`` rules, incl. ``ceil_mode``)."""
    s = k if s is None else s
    _check_positive(k=k, s=s, d=d)
    if p < 0:
        raise ArithError(f"padding must be >= 0, got {p}")
    if p > k // 2:
        raise ArithError(
            f"pooling padding{_ax(axis)} {p} is more than half the kernel {k}", "torch allows at most kernel // 2"
        )
    num = i + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)
    o = num // s + 1
    if ceil_mode and (o - 1) * s >= i + p:
        o -= 1  # the last window must start inside the input or the left padding
    if o < 1:
        raise ArithError(
            f"output size{_ax(axis)} would be {o} (< 1): the pooling window does not fit the input {i}",
            "use a smaller kernel or more padding",
        )
    return o


def conv_transpose_out(
    i: int, k: int, s: int = 1, p: int = 0, d: int = 1, output_padding: int = 0, *, axis: str = ""
) -> int:
    """Output size of a transposed convolution along one axis (``torch.nn.ConvTranspose2d``)."""
    _check_positive(k=k, s=s, d=d)
    if p < 0 or output_padding < 0:
        raise ArithError("padding and output padding must be >= 0")
    if output_padding >= max(s, d):
        raise ArithError(
            f"output padding{_ax(axis)} {output_padding} must be smaller than stride or dilation",
            "as torch.nn.ConvTranspose2d requires",
        )
    o = (i - 1) * s - 2 * p + d * (k - 1) + output_padding + 1
    if o < 1:
        raise ArithError(f"output size{_ax(axis)} would be {o} (< 1)", "use less padding")
    return o


def _check_positive(**values: int) -> None:
    names = {"k": "kernel size", "s": "stride", "d": "dilation"}
    for key, v in values.items():
        if v < 1:
            raise ArithError(f"{names[key]} must be at least 1, got {v}")


def _ax(axis: str) -> str:
    return f" ({axis})" if axis else ""


# ----------------------------------------------------------------------------------- receptive fields


def _fmt(x: Fraction | int) -> str:
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{float(x):g}"


@dataclass(frozen=True)
class Field:
    """Receptive field state per axis (h, w): field size, jump (cumulative stride), start (centre of cell 0)."""

    rf: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))
    jump: tuple[Fraction, Fraction] = (Fraction(1), Fraction(1))
    start: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))

    def through(self, kernel: Pair, stride: Pair = (1, 1), padding: Pair = (0, 0), dilation: Pair = (1, 1)) -> Field:
        """The field after a sliding window (conv or pooling) with these settings."""
        rf, jump, start = [], [], []
        for a in range(2):
            eff = dilation[a] * (kernel[a] - 1) + 1
            rf.append(self.rf[a] + (eff - 1) * self.jump[a])
            start.append(self.start[a] + (Fraction(eff - 1, 2) - padding[a]) * self.jump[a])
            jump.append(self.jump[a] * stride[a])
        return Field(tuple(rf), tuple(jump), tuple(start))

    def through_transpose(self, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Field:
        """Approximate field after a transposed convolution: each output sees ceil(k_eff/s) input cells."""
        rf, jump, start = [], [], []
        for a in range(2):
            eff = dilation[a] * (kernel[a] - 1) + 1
            rf.append(self.rf[a] + (math.ceil(eff / stride[a]) - 1) * self.jump[a])
            jump.append(self.jump[a] / stride[a])
            start.append(self.start[a] + (padding[a] - Fraction(eff - 1, 2)) * self.jump[a] / stride[a])
        return Field(tuple(rf), tuple(jump), tuple(start))

    def union(self, other: Field) -> Field:
        """Field of an element-wise merge (residual add, concat): the smallest window holding both windows on each
        axis (the maps have the same jump; their windows may be centred differently)."""
        rf, start = [], []
        for a in range(2):
            lo = min(self.start[a] - (self.rf[a] - 1) / 2, other.start[a] - (other.rf[a] - 1) / 2)
            hi = max(self.start[a] + (self.rf[a] - 1) / 2, other.start[a] + (other.rf[a] - 1) / 2)
            rf.append(hi - lo + 1)
            start.append((lo + hi) / 2)
        return Field(tuple(rf), self.jump, tuple(start))

    def shifted(self, axis: int, cells: int | Fraction, step: int = 1) -> Field:
        """The field after cropping (`cells` > 0) or zero-padding (`cells` < 0) the map's start on one axis, keeping
        every `step`-th cell."""
        start, jump = list(self.start), list(self.jump)
        start[axis] = start[axis] + cells * jump[axis]
        jump[axis] = jump[axis] * step
        return Field(self.rf, tuple(jump), tuple(start))

    @property
    def receptive_field(self) -> Pair | tuple:
        return tuple(int(r) if Fraction(r).denominator == 1 else float(r) for r in self.rf)

    @property
    def jump_value(self) -> tuple:
        return tuple(int(j) if Fraction(j).denominator == 1 else float(j) for j in self.jump)

    @property
    def offset(self) -> tuple:
        """Input coordinate of the top-left corner of output cell (0, 0)'s window (may be negative: padding)."""
        vals = [self.start[a] - (self.rf[a] - 1) / 2 for a in range(2)]
        return tuple(int(v) if Fraction(v).denominator == 1 else float(v) for v in vals)

    def describe(self) -> tuple[str, str]:
        return _pair_text(self.rf), _pair_text(self.jump)


def _pair_text(p) -> str:
    a, b = (_fmt(x) for x in p)
    return a if a == b else f"{a}x{b}"


# --------------------------------------------------------------------------------------------- layers


Shape = tuple  # (C, H, W) for feature maps, (N,) after flatten / fc


@dataclass
class Layer:
    """One computed layer: its output shape, parameters, MACs, receptive field and the formulas used."""

    name: str
    op: str
    input: Shape
    output: Shape
    params: int | None = 0
    macs: int | None = 0
    field: Field = dc_field(default_factory=Field)
    formulas: list[str] = dc_field(default_factory=list)

    @property
    def receptive_field(self):
        return self.field.receptive_field

    @property
    def jump(self):
        return self.field.jump_value

    def as_dict(self) -> dict:
        rf, jump = self.field.receptive_field, self.field.jump_value
        return {
            "name": self.name,
            "op": self.op,
            "output": list(self.output),
            "params": self.params,
            "macs": self.macs,
            "receptive_field": list(rf),
            "jump": list(jump),
        }


def _spatial(shape: Shape, op: str) -> tuple[int | None, int, int]:
    if len(shape) != 3:
        raise ArithError(
            f"{op} needs a CxHxW feature map, but the input is flat ({shape[0]} features)", "put it before flatten/fc"
        )
    return shape


def _formula_lines(
    kind: str, ih: int, iw: int, oh: int, ow: int, k: Pair, s: Pair, p: Pair, d: Pair, extra: dict | None = None
) -> list[str]:
    lines = []
    axes = [("H", ih, oh, 0), ("W", iw, ow, 1)]
    if ih == iw and k[0] == k[1] and s[0] == s[1] and p[0] == p[1] and d[0] == d[1]:
        axes = [("H=W", ih, oh, 0)]
    for label, i, o, a in axes:
        if kind == "convT":
            op = (extra or {}).get("output_padding", (0, 0))[a]
            lines.append(f"{label}: ({i}-1)*{s[a]} - 2*{p[a]} + {d[a]}*({k[a]}-1) + {op} + 1 = {o}")
        elif kind == "ceil":
            raw = -(-(i + 2 * p[a] - d[a] * (k[a] - 1) - 1) // s[a]) + 1
            formula = f"{label}: ceil(({i} + 2*{p[a]} - {d[a]}*({k[a]}-1) - 1) / {s[a]}) + 1 = {raw}"
            if raw == o:
                lines.append(formula)
            else:  # PyTorch's last-window rule: a window may not start in the right padding or beyond
                lines.append(
                    f"{formula}, less the last window: it would start at ({raw}-1)*{s[a]} = {(raw - 1) * s[a]}, "
                    f"past the input and its left padding ({i} + {p[a]}), so {o}"
                )
        else:
            lines.append(f"{label}: floor(({i} + 2*{p[a]} - {d[a]}*({k[a]}-1) - 1) / {s[a]}) + 1 = {o}")
    return lines


def _resolve_padding(padding, k: Pair, s: Pair, d: Pair, op: str) -> tuple[Pair, Pair]:
    """Returns (left/top padding, right/bottom padding) per axis as two pairs (top,left) and (bottom,right)."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if s != (1, 1):
            raise ArithError(
                f"{op}: padding 'same' needs stride 1", "as in torch.nn.Conv2d; give the padding as a number"
            )
        total = [d[a] * (k[a] - 1) for a in range(2)]
        lo = tuple(t // 2 for t in total)
        return lo, tuple(t - lo_ for t, lo_ in zip(total, lo))
    return padding, padding


def conv2d(
    shape: Shape,
    *,
    out_channels: int | None,
    kernel,
    stride=1,
    padding=0,
    dilation=1,
    groups: int = 1,
    bias: bool = True,
    field_in: Field | None = None,
    name: str = "conv",
) -> Layer:
    """A ``Conv2d`` layer on ``shape`` = (C, H, W); ``out_channels=None`` computes the spatial size only."""
    c, h, w = _spatial(shape, "conv")
    k, s, d = (parse_pair(kernel, "kernel size"), parse_pair(stride, "stride"), parse_pair(dilation, "dilation"))
    pad = parse_padding(padding)
    lo, hi = _resolve_padding(pad, k, s, d, "conv")
    if groups < 1:
        raise ArithError(f"groups must be at least 1, got {groups}")
    if out_channels is not None and out_channels < 1:
        raise ArithError(f"out channels must be at least 1, got {out_channels}")
    if c is not None and c % groups:
        raise ArithError(f"groups={groups} does not divide the {c} input channels")
    if out_channels is not None and out_channels % groups:
        raise ArithError(f"groups={groups} does not divide the {out_channels} output channels")
    if lo == hi:
        oh = conv_out(h, k[0], s[0], lo[0], d[0], axis="H")
        ow = conv_out(w, k[1], s[1], lo[1], d[1], axis="W")
        formulas = _formula_lines("conv", h, w, oh, ow, k, s, lo, d)
    else:  # 'same' with an even kernel pads one more on the bottom/right, as torch does
        oh, ow = h, w
        formulas = [f"'same' padding {lo[0]}+{hi[0]} x {lo[1]}+{hi[1]}: output = input = {h}x{w}"]
    params = macs = None
    if out_channels is not None and c is not None:
        per = k[0] * k[1] * c // groups
        params = (per + (1 if bias else 0)) * out_channels
        macs = oh * ow * out_channels * per
        b = " + 1" if bias else ""
        formulas.append(f"params: ({k[0]}*{k[1]}*{c}/{groups}{b})*{out_channels} = {params:,}")
        formulas.append(f"MACs: {oh}*{ow}*{out_channels}*({k[0]}*{k[1]}*{c}/{groups}) = {macs:,}")
    fi = (field_in or Field()).through(k, s, lo, d)
    return Layer(name, "conv", (c, h, w), (out_channels, oh, ow), params, macs, fi, formulas)


def pool2d(
    shape: Shape,
    *,
    kind: str = "max",
    kernel,
    stride=None,
    padding=0,
    dilation=1,
    ceil_mode: bool = False,
    field_in: Field | None = None,
    name: str | None = None,
) -> Layer:
    """A ``MaxPool2d`` / ``AvgPool2d`` layer (stride defaults to the kernel size, as in torch)."""
    c, h, w = _spatial(shape, f"{kind}pool")
    k = parse_pair(kernel, "kernel size")
    s = k if stride is None else parse_pair(stride, "stride")
    d = parse_pair(dilation, "dilation")
    if kind == "avg" and d != (1, 1):
        raise ArithError("avgpool has no dilation", "torch.nn.AvgPool2d has none")
    pad = parse_padding(padding)
    if pad == "same":
        raise ArithError("pooling has no 'same' padding", "give the padding as a number, at most kernel // 2")
    p = (0, 0) if pad == "valid" else pad
    oh = pool_out(h, k[0], s[0], p[0], d[0], ceil_mode, axis="H")
    ow = pool_out(w, k[1], s[1], p[1], d[1], ceil_mode, axis="W")
    formulas = _formula_lines("ceil" if ceil_mode else "pool", h, w, oh, ow, k, s, p, d)
    fi = (field_in or Field()).through(k, s, p, d)
    return Layer(name or f"{kind}pool", f"{kind}pool", (c, h, w), (c, oh, ow), 0, 0, fi, formulas)


def conv_transpose2d(
    shape: Shape,
    *,
    out_channels: int | None,
    kernel,
    stride=1,
    padding=0,
    dilation=1,
    output_padding=0,
    groups: int = 1,
    bias: bool = True,
    field_in: Field | None = None,
    name: str = "convT",
) -> Layer:
    """A ``ConvTranspose2d`` layer: ``o = (i-1)s - 2p + d(k-1) + output_padding + 1``."""
    c, h, w = _spatial(shape, "convT")
    k, s, d = (parse_pair(kernel, "kernel size"), parse_pair(stride, "stride"), parse_pair(dilation, "dilation"))
    pad = parse_padding(padding)
    if isinstance(pad, str):
        raise ArithError("convT takes numeric padding only", "as torch.nn.ConvTranspose2d")
    op = parse_pair(output_padding, "output padding", minimum=0)
    if groups < 1:
        raise ArithError(f"groups must be at least 1, got {groups}")
    if c is not None and c % groups:
        raise ArithError(f"groups={groups} does not divide the {c} input channels")
    if out_channels is not None and (out_channels < 1 or out_channels % groups):
        raise ArithError(f"groups={groups} does not divide the {out_channels} output channels")
    oh = conv_transpose_out(h, k[0], s[0], pad[0], d[0], op[0], axis="H")
    ow = conv_transpose_out(w, k[1], s[1], pad[1], d[1], op[1], axis="W")
    formulas = _formula_lines("convT", h, w, oh, ow, k, s, pad, d, {"output_padding": op})
    params = macs = None
    if out_channels is not None and c is not None:
        per = k[0] * k[1] * out_channels // groups
        params = c * per + (out_channels if bias else 0)
        macs = h * w * c * per
        b = f" + {out_channels}" if bias else ""
        formulas.append(f"params: {c}*({k[0]}*{k[1]}*{out_channels}/{groups}){b} = {params:,}")
        formulas.append(f"MACs: {h}*{w}*{c}*({k[0]}*{k[1]}*{out_channels}/{groups}) = {macs:,}")
    fi = (field_in or Field()).through_transpose(k, s, pad, d)
    return Layer(name, "convT", (c, h, w), (out_channels, oh, ow), params, macs, fi, formulas)


def linear(
    shape: Shape, *, out_features: int, bias: bool = True, field_in: Field | None = None, name: str = "fc"
) -> Layer:
    """A ``Linear`` layer; a CxHxW input is flattened first, and the field grows to cover the whole map."""
    if out_features < 1:
        raise ArithError(f"fc output features must be at least 1, got {out_features}")
    fi = field_in or Field()
    if len(shape) == 3:
        c, h, w = shape
        fi = fi.through((h, w))  # a Linear on a flattened map is a conv whose kernel covers the map
        n = c * h * w
    else:
        n = shape[0]
    params = n * out_features + (out_features if bias else 0)
    macs = n * out_features
    formulas = [
        f"params: {n}*{out_features}" + (f" + {out_features}" if bias else "") + f" = {params:,}",
        f"MACs: {n}*{out_features} = {macs:,}",
    ]
    return Layer(name, "fc", shape, (out_features,), params, macs, fi, formulas)


# ----------------------------------------------------------------------------------- --layers parsing

_ACTIVATIONS = {
    "relu",
    "relu6",
    "sigmoid",
    "tanh",
    "gelu",
    "silu",
    "swish",
    "elu",
    "leakyrelu",
    "leaky_relu",
    "hardswish",
    "mish",
    "softmax",
    "identity",
    "prelu",
}
# op name -> (canonical, positional argument names)
LAYER_OPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "conv": ("conv", ("out", "k", "s", "p", "d", "g")),
    "conv2d": ("conv", ("out", "k", "s", "p", "d", "g")),
    "dwconv": ("dwconv", ("k", "s", "p", "d")),
    "convt": ("convT", ("out", "k", "s", "p", "op", "d", "g")),
    "deconv": ("convT", ("out", "k", "s", "p", "op", "d", "g")),
    "maxpool": ("maxpool", ("k", "s", "p", "d")),
    "avgpool": ("avgpool", ("k", "s", "p")),
    "pool": ("maxpool", ("k", "s", "p", "d")),
    "gap": ("gap", ()),
    "globalavgpool": ("gap", ()),
    "adaptiveavgpool": ("gap", ()),
    "bn": ("bn", ()),
    "batchnorm": ("bn", ()),
    "dropout": ("dropout", ("p",)),
    "flatten": ("flatten", ()),
    "fc": ("fc", ("out",)),
    "linear": ("fc", ("out",)),
    **dict.fromkeys(_ACTIVATIONS, ("act", ())),
}
_KW_ALIASES = {
    "kernel": "k",
    "kernel_size": "k",
    "stride": "s",
    "padding": "p",
    "dilation": "d",
    "groups": "g",
    "out_channels": "out",
    "out_features": "out",
    "output_padding": "op",
    "ceil_mode": "ceil",
}
_TOKEN_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?")


@dataclass
class LayerSpec:
    op: str
    text: str
    args: dict


def parse_layers(spec: str) -> list[LayerSpec]:
    """Parse ``"conv(6,k=5) relu maxpool(2) flatten fc(10)"`` into layer specs."""
    specs: list[LayerSpec] = []
    pos = 0
    spec = spec.strip()
    while pos < len(spec):
        if spec[pos] in " \t\n,;>|-":
            pos += 1
            continue
        m = _TOKEN_RE.match(spec, pos)
        if not m:
            raise UsageError(
                f"cannot read layer at {spec[pos : pos + 20]!r}", "write layers like conv(6,k=5) relu maxpool(2)"
            )
        pos = m.end()
        name, argtext = m.group(1), m.group(2)
        key = name.lower()
        if key not in LAYER_OPS:
            raise UsageError(
                f"unknown layer {name!r}", "known: " + ", ".join(sorted({v[0] for v in LAYER_OPS.values()}))
            )
        op, positional = LAYER_OPS[key]
        args = _layer_args(m.group(0), op, positional, argtext)
        if op == "act":
            args["act"] = key
        specs.append(LayerSpec(op, m.group(0).replace(" ", ""), args))
    if not specs:
        raise UsageError("no layers given", 'e.g. --layers "conv(6,k=5) relu maxpool(2)"')
    return specs


# the keywords each layer takes besides its positional ones; anything else is a typo, never silently ignored
_EXTRA_KW = {
    "conv": ("bias",),
    "dwconv": ("bias",),
    "convT": ("bias",),
    "maxpool": ("ceil",),
    "avgpool": ("ceil",),
    "fc": ("bias",),
}


def _layer_args(text: str, op: str, positional: tuple, argtext: str | None) -> dict:
    """`conv(6,k=5,s=2)` -> {"out": "6", "k": "5", "s": "2"}; unknown keywords are a UsageError naming them."""
    allowed = set(positional) | set(_EXTRA_KW.get(op, ()))
    args: dict = {}
    if not argtext or not argtext.strip():
        return args
    for i, raw in enumerate(a.strip() for a in argtext.split(",")):
        if "=" in raw:
            k, v = (x.strip() for x in raw.split("=", 1))
            k = _KW_ALIASES.get(k.lower(), k.lower())
            if k not in allowed:
                import difflib

                close = difflib.get_close_matches(k, sorted(allowed) + sorted(_KW_ALIASES), n=1)
                raise UsageError(
                    f"unknown keyword {k!r} in {text!r}",
                    (f"did you mean {close[0]}? " if close else "")
                    + "it takes "
                    + (", ".join(sorted(allowed)) or "no arguments"),
                )
        else:
            if i >= len(positional):
                raise UsageError(f"too many arguments in {text!r}")
            k, v = positional[i], raw
        args[k] = v
    return args


def _int(args: dict, key: str, default=None, what: str | None = None) -> int:
    v = args.get(key, default)
    if v is None:
        raise UsageError(f"missing {what or key}")
    if isinstance(v, str) and len(v.strip().lstrip("-")) > MAX_DIGITS:
        raise UsageError(f"{what or key} is too large: {v[:20]}...", f"at most {MAX_DIGITS} digits")
    try:
        return int(v)
    except (TypeError, ValueError):
        raise UsageError(f"{what or key} must be an integer, got {v!r}") from None


def _bool(v) -> bool:
    text = str(v).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{v!r} is not true or false", "use true or false, e.g. ceil=true")


def _conv_args(a: dict, kernel: int = 3) -> dict:
    return {
        "kernel": a.get("k", kernel),
        "stride": a.get("s", 1),
        "padding": a.get("p", 0),
        "dilation": a.get("d", 1),
        "bias": _bool(a.get("bias", True)),
    }


def _conv(shape, a, fi, st):
    return conv2d(
        shape,
        out_channels=_int(a, "out", what="conv output channels"),
        groups=_int(a, "g", 1),
        field_in=fi,
        **_conv_args(a),
    )


def _dwconv(shape, a, fi, st):
    c = _spatial(shape, "dwconv")[0]
    return conv2d(shape, out_channels=c, groups=c, field_in=fi, **_conv_args(a))


def _convT(shape, a, fi, st):
    return conv_transpose2d(
        shape,
        out_channels=_int(a, "out", what="convT output channels"),
        output_padding=a.get("op", 0),
        groups=_int(a, "g", 1),
        field_in=fi,
        **_conv_args(a, 2),
    )


def _pool(kind):
    def rule(shape, a, fi, st):
        return pool2d(
            shape,
            kind=kind,
            kernel=a.get("k", 2),
            stride=a.get("s"),
            padding=a.get("p", 0),
            dilation=a.get("d", 1),
            ceil_mode=_bool(a.get("ceil", False)),
            field_in=fi,
        )

    return rule


def _gap(shape, a, fi, st):
    c, h, w = _spatial(shape, "gap")
    return Layer("gap", "gap", shape, (c, 1, 1), 0, 0, fi.through((h, w)), [f"global average over {h}x{w}"])


def _bn(shape, a, fi, st):
    c = _spatial(shape, "batchnorm")[0]
    return Layer("bn", "bn", shape, shape, 2 * c, 0, fi, [f"params: 2*{c} = {2 * c} (scale, shift)"])


def _flatten(shape, a, fi, st):
    if len(shape) == 3:
        st["flattened_map"] = shape[1:]  # the HxW a flatten removed: the next fc's kernel covers it
    return Layer("flatten", "flatten", shape, (math.prod(shape),), 0, 0, fi, [])


def _fc(shape, a, fi, st):
    if st.get("flattened_map") is not None and len(shape) == 1:
        fi = fi.through(st.pop("flattened_map"))
    return linear(
        shape, out_features=_int(a, "out", what="fc output features"), bias=_bool(a.get("bias", True)), field_in=fi
    )


def _elementwise(shape, a, fi, st):
    """Activations, dropout: shape and field unchanged (PReLU has one parameter)."""
    if a.get("act") == "prelu":
        return Layer("prelu", "act", shape, shape, 1, 0, fi, [])
    return Layer(a.get("act", "act"), "act", shape, shape, 0, 0, fi, [])


# one rule per --layers operation: (shape, args, field in, state carried along the stack) -> Layer
LAYER_RULES = {
    "conv": _conv,
    "dwconv": _dwconv,
    "convT": _convT,
    "maxpool": _pool("max"),
    "avgpool": _pool("avg"),
    "gap": _gap,
    "bn": _bn,
    "flatten": _flatten,
    "fc": _fc,
}


def run_layers(input_shape: Shape, specs: list[LayerSpec] | str) -> list[Layer]:
    """Compute every layer of a stack, carrying shape and receptive field from one to the next."""
    if isinstance(specs, str):
        specs = parse_layers(specs)
    shape: Shape = tuple(input_shape)
    if shape[0] is None:
        raise UsageError("--layers needs the input channels", "give --in as CxHxW, e.g. 3x32x32")
    fi = Field()
    state: dict = {}
    out: list[Layer] = []
    for sp in specs:
        rule = LAYER_RULES.get(sp.op)
        try:
            if rule is not None:
                layer = rule(shape, sp.args, fi, state)
            elif sp.op == "act":
                layer = _elementwise(shape, sp.args, fi, state)
            else:  # dropout and other shape-keeping layers
                layer = Layer(sp.args.get("act", sp.op), sp.op, shape, shape, 0, 0, fi, [])
        except ArithError as e:
            raise ArithError(f"layer {len(out) + 1} {sp.text}: {e.message}", e.hint) from None
        layer = replace(layer, name=sp.text)
        out.append(layer)
        shape, fi = layer.output, layer.field
    return out


def totals(layers: list[Layer]) -> dict:
    """Total parameters and MACs of a computed stack."""
    return {"params": sum(x.params or 0 for x in layers), "macs": sum(x.macs or 0 for x in layers)}
