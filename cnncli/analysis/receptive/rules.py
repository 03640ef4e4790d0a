"""The receptive-field rules: one registered function per operation, as `torch.utils.flop_counter` registers formulas.

A rule takes the `Call` of one graph node (its inputs' fields and layouts, its shapes) and returns the `Info` of its
result. Module rules are found by the module's class (a subclass uses its base's rule); function rules by the
function itself (`F.conv2d`, `operator.add`) or by the name of a function or tensor method (`"mean"`). Adding an
operation is one decorated function:

    @function_rule(torch.roll, "roll")
    def _roll(c: Call) -> Info:
        return Info(unknown(c.f), c.lay)

An operation without a rule is UNKNOWN (measured by `cnn summary`), keeping its layout when its result is shaped
like its input. A rule that raises on an unusual call is treated the same way: measured rather than guessed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from cnncli.analysis.arith import Field
from cnncli.analysis.receptive.layout import (
    GLOBAL,
    SPATIAL,
    WHOLE,
    Info,
    dim,
    dims,
    join,
    last_to,
    made_global,
    over_positions,
    pair,
    reshape_layout,
    shape_layout_like,
    shape_of,
    spatial,
    through,
    unknown,
)


@dataclass
class Call:
    """One call in the graph as a rule sees it. `walk` gives the Info of any earlier value (`walk.info(value)`,
    `walk.infos`); `module` is the called module for `call_module` nodes."""

    node: torch.fx.Node
    walk: Any
    module: Any = None  # an nn.Module for call_module nodes

    @property
    def args(self) -> tuple:
        return self.node.args

    def arg(self, i: int, key: str, default=None):
        """Argument `i` given by position or as `key=`."""
        return self.node.args[i] if len(self.node.args) > i else self.node.kwargs.get(key, default)

    def info(self, value) -> Info:
        return self.walk.info(value)

    @property
    def name(self) -> str:
        """The function's or method's name (`"mean"` for `x.mean()` and `torch.mean`)."""
        t = self.node.target
        return t if isinstance(t, str) else getattr(t, "__name__", "")

    @cached_property
    def x(self) -> Info:
        return self.walk.info(self.node.args[0]) if self.node.args else Info()

    @property
    def f(self):
        return self.x.field

    @property
    def lay(self) -> tuple | None:
        return self.x.layout

    @cached_property
    def in_shape(self) -> tuple | None:
        return shape_of(self.node.args[0]) if self.node.args else None

    @cached_property
    def out_shape(self) -> tuple | None:
        return shape_of(self.node)

    @cached_property
    def fields(self) -> list:
        """The fields of every input of the call."""
        return [self.walk.infos[a].field for a in self.node.all_input_nodes if a in self.walk.infos]

    def kept_layout(self) -> tuple | None:
        """The input's layout when the result is shaped like the input, else None."""
        return self.lay if self.out_shape is not None and self.out_shape == self.in_shape else None


Rule = Callable[[Call], Info]
MODULE_RULES: dict[type, Rule] = {}
FUNCTION_RULES: dict[object, Rule] = {}


def module_rule(*classes: type) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of these module classes (and their subclasses)."""

    def deco(rule: Rule) -> Rule:
        for cls in classes:
            MODULE_RULES[cls] = rule
        return rule

    return deco


def function_rule(*targets) -> Callable[[Rule], Rule]:
    """Register the decorated function as the rule of these functions, or of functions and methods by name."""

    def deco(rule: Rule) -> Rule:
        for t in targets:
            FUNCTION_RULES[t] = rule
        return rule

    return deco


def not_covered(c: Call) -> Info:
    """An operation without a rule: measured; a result shaped like its input keeps its layout."""
    return Info(unknown(join(c.fields)), c.kept_layout())


def rule_for_module(m: nn.Module) -> Rule:
    for cls in type(m).__mro__:
        if cls in MODULE_RULES:
            return MODULE_RULES[cls]
    return not_covered


def rule_for_function(target) -> Rule:
    try:
        rule = FUNCTION_RULES.get(target)
    except TypeError:  # an unhashable target
        rule = None
    if rule is None:
        name = target if isinstance(target, str) else getattr(target, "__name__", "")
        rule = FUNCTION_RULES.get(name)
    return rule or not_covered


# ---------------------------------------------------------------------------------------------- shared reasoning


def _is_image(lay) -> bool:
    return lay is not None and len(lay) == 4 and lay[2:] in (("h", "w"), ("h", "1"), ("1", "w"), ("1", "1"))


def per_position(f, lay, over) -> object:
    """An operation over the dims `over` of each position (a Linear, a LayerNorm, a matrix product with weights):
    the field stays when those are feature dims, and becomes global when they hold the image positions."""
    if over is None or lay is None:
        return unknown(f)
    labels = {lay[d] for d in over}
    if labels <= {"c", "1", "n"}:
        return f
    if "x" not in labels and (labels & set(WHOLE) or {"h", "w"} <= labels):
        return made_global(f)
    return unknown(f)


def _last_dims(lay, n: int) -> list[int] | None:
    return list(range(len(lay) - n, len(lay))) if lay else None


def _adaptive(c: Call) -> Info:
    f, in_shape, out_shape = c.f, c.in_shape, c.out_shape
    if f is None or in_shape is None or out_shape is None or len(in_shape) != 4:
        return Info(unknown(f), c.lay)
    (ih, iw), (oh, ow) = in_shape[2:], out_shape[2:]
    if (oh, ow) == (1, 1):
        return Info(made_global(f), c.lay)
    if (ih, iw) == (1, 1):
        return Info(f, c.lay)  # every output cell reads the one input cell
    if ih % oh == 0 and iw % ow == 0:
        k = (ih // oh, iw // ow)
        return Info(through(f, k, k), c.lay)
    return Info(unknown(f), c.lay)  # overlapping windows of varying size: measure


def _softmax_over(c: Call, d) -> Info:
    if c.lay is None or d is None:
        return Info(unknown(c.f), c.lay)
    return Info(over_positions(c.f, c.lay[dim(d, len(c.lay))]), c.lay)


def broadcast_layout(c: Call) -> tuple | None:
    """The layout of an element-wise result: that of the input with the most informative layout of full rank."""
    out, best = c.out_shape, None
    for a in c.node.all_input_nodes:
        info = c.walk.infos.get(a)
        if info is None or info.layout is None or info.field is None:
            continue
        lay = info.layout
        if out is not None and len(lay) < len(out):
            lay = ("1",) * (len(out) - len(lay)) + lay
        if best is None or sum(spatial(v) for v in lay) > sum(spatial(v) for v in best):
            best = lay
    return best


def _padding(p, dilation, kernel) -> tuple[int, int]:
    if isinstance(p, str):
        return (0, 0) if p == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
    return pair(p)


# ------------------------------------------------------------------------------------------------- modules


@module_rule(nn.Conv2d)
def _conv(c: Call) -> Info:
    m = c.module
    if not _is_image(c.lay):
        return Info(unknown(c.f), c.lay)
    return Info(
        through(c.f, m.kernel_size, m.stride, _padding(m.padding, m.dilation, m.kernel_size), m.dilation), c.lay
    )


@module_rule(nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
def _pool(c: Call) -> Info:
    m = c.module
    if not _is_image(c.lay):
        return Info(unknown(c.f), c.lay)
    k = pair(m.kernel_size)
    s = pair(m.stride if m.stride else m.kernel_size)
    return Info(through(c.f, k, s, pair(getattr(m, "padding", 0)), pair(getattr(m, "dilation", 1))), c.lay)


@module_rule(nn.ConvTranspose2d)
def _conv_transpose(c: Call) -> Info:
    m = c.module
    if not _is_image(c.lay) or not isinstance(c.f, Field):
        return Info(unknown(c.f), c.lay)
    return Info(c.f.through_transpose(m.kernel_size, m.stride, m.padding, m.dilation), c.lay)


module_rule(nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)(_adaptive)


@module_rule(nn.Linear)
def _linear_module(c: Call) -> Info:
    return Info(per_position(c.f, c.lay, [len(c.lay) - 1] if c.lay else None), last_to(c.lay, "c"))


@module_rule(nn.Bilinear)
def _bilinear(c: Call) -> Info:
    return Info(unknown(join(c.fields)), c.lay)


@module_rule(nn.LayerNorm)
def _layer_norm_module(c: Call) -> Info:
    return Info(per_position(c.f, c.lay, _last_dims(c.lay, len(c.module.normalized_shape))), c.lay)


@module_rule(nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)
def _statistics_over_the_map(c: Call) -> Info:
    return Info(made_global(c.f) if c.lay is None or any(spatial(d) for d in c.lay) else c.f, c.lay)


@module_rule(nn.MultiheadAttention)
def _attention_module(c: Call) -> Info:
    if c.lay is None or len(c.lay) < 2:
        return Info(unknown(join(c.fields)), c.lay)
    return Info(over_positions(join(c.fields), c.lay[1 if c.module.batch_first else 0]), c.lay)


@module_rule(nn.Softmax, nn.LogSoftmax, nn.Softmin)
def _softmax_module(c: Call) -> Info:
    return _softmax_over(c, c.module.dim)


@module_rule(nn.Flatten, nn.Unflatten)
def _flatten_module(c: Call) -> Info:
    return Info(c.f, reshape_layout(c.lay, c.in_shape, c.out_shape))


@module_rule(nn.ChannelShuffle)
def _keeps(c: Call) -> Info:
    return Info(c.f, c.lay)


@module_rule(
    *(nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU),
    *(nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Softsign, nn.Tanhshrink),
    *(nn.Threshold, nn.LogSigmoid, nn.GLU, nn.Identity, nn.LocalResponseNorm),
    *(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout),
    *(nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm),
)
def _pointwise_module(c: Call) -> Info:
    return Info(join(c.fields), c.lay)


# ----------------------------------------------------------------------------------------------- functions

_POINTWISE = (
    *("add", "sub", "mul", "div", "truediv", "floordiv", "neg", "pow", "sqrt", "rsqrt", "exp", "log", "abs"),
    *("clamp", "clip", "relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid"),
    *("hardtanh", "leaky_relu", "elu", "mish", "softplus", "dropout", "dropout2d", "add_", "mul_", "sub_", "div_"),
    *("sigmoid_", "iadd", "imul", "isub", "itruediv", "where", "maximum", "minimum", "erf", "reciprocal", "square"),
    *("masked_fill", "sign", "floor", "ceil", "round", "addcmul", "lerp", "hardswish_", "clamp_", "clamp_min"),
    *("clamp_max", "selu", "celu", "glu", "logsigmoid", "softsign", "prelu", "channel_shuffle"),
    *("native_channel_shuffle", "eq", "ne", "gt", "lt", "ge", "le", "logical_not", "logical_and", "logical_or"),
    *("fill_", "zero_", "masked_fill_", "mul_add"),
    *(operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow, operator.iadd),
    *(operator.imul, operator.isub, operator.itruediv, operator.floordiv),
)


@function_rule(*_POINTWISE)
def _pointwise(c: Call) -> Info:
    return Info(join(c.fields), broadcast_layout(c))


@function_rule("permute")
def _permute(c: Call) -> Info:
    lay, args = c.lay, c.args
    if not lay:
        return Info(unknown(c.f), None)
    order = args[1:] if len(args) > 1 and isinstance(args[1], int) else c.arg(1, "dims")
    return Info(c.f, tuple(lay[dim(d, len(lay))] for d in order))


@function_rule("transpose", "swapaxes", "swapdims", "movedim", "moveaxis")
def _move_axes(c: Call) -> Info:
    lay, args = c.lay, c.args
    if not lay:
        return Info(unknown(c.f), None)
    new = list(lay)
    a, b = dim(args[1], len(lay)), dim(args[2], len(lay))
    if c.name in ("movedim", "moveaxis"):
        new.insert(b, new.pop(a))
    else:
        new[a], new[b] = new[b], new[a]
    return Info(c.f, tuple(new))


@function_rule("flatten", "view", "reshape", "unflatten", "view_as", "reshape_as")
def _reshape(c: Call) -> Info:
    if not c.lay:
        return Info(unknown(c.f), None)
    return Info(c.f, reshape_layout(c.lay, c.in_shape, c.out_shape))


@function_rule(
    *("unsqueeze", "squeeze", "expand", "expand_as", "contiguous", "clone", "to", "float", "double", "half"),
    *("bfloat16", "type", "type_as", "detach", "requires_grad_", "_assert"),
)
def _same_positions(c: Call) -> Info:
    if not c.lay:
        return Info(unknown(c.f), None)
    return Info(c.f, shape_layout_like(c.lay, c.in_shape, c.out_shape))


function_rule(F.adaptive_avg_pool2d, F.adaptive_max_pool2d)(_adaptive)


@function_rule(F.conv2d)
def _conv_function(c: Call) -> Info:
    if c.lay is None or len(c.lay) != 4 or c.lay[1] in SPATIAL:
        return Info(unknown(c.f), c.lay)
    w = shape_of(c.arg(1, "weight"))
    if w is None:
        return Info(unknown(c.f), c.lay)
    k, d = tuple(w[2:]), pair(c.arg(5, "dilation", 1))
    return Info(through(c.f, k, pair(c.arg(3, "stride", 1)), _padding(c.arg(4, "padding", 0), d, k), d), c.lay)


@function_rule(F.max_pool2d, F.avg_pool2d)
def _pool_function(c: Call) -> Info:
    if c.lay is None or len(c.lay) != 4 or c.lay[1] in SPATIAL:
        return Info(unknown(c.f), c.lay)
    k = pair(c.arg(1, "kernel_size"))
    s = c.arg(2, "stride")
    d = pair(c.arg(4, "dilation", 1)) if c.node.target is F.max_pool2d else (1, 1)
    return Info(through(c.f, k, k if not s else pair(s), pair(c.arg(3, "padding", 0)), d), c.lay)


@function_rule("mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod")
def _reduce(c: Call) -> Info:
    """mean/sum/amax... over `dim`: global when an image axis is reduced; max/min of two tensors is element-wise."""
    if c.name in ("max", "min") and len(c.args) > 1 and isinstance(c.args[1], torch.fx.Node):
        return _pointwise(c)
    f, lay = c.f, c.lay
    if lay is None:
        return Info(unknown(f), None)
    d = c.arg(1, "dim")
    over = list(range(len(lay))) if d is None else dims(d, len(lay))
    if over is None:
        return Info(unknown(f), None)
    keep = c.node.kwargs.get("keepdim", c.args[2] if len(c.args) > 2 and isinstance(c.args[2], bool) else False)
    labels = {lay[i] for i in over}
    if "x" in labels or (labels & {"h", "w"} and not ({"h", "w"} <= labels)):
        field = unknown(f)  # a reduction over part of the positions (a window, one axis)
    else:
        field = made_global(f) if labels & set(SPATIAL) else f
    if keep:
        return Info(field, tuple("1" if i in over else lab for i, lab in enumerate(lay)))
    return Info(field, tuple(lab for i, lab in enumerate(lay) if i not in over))


@function_rule("softmax", "log_softmax", "softmin")
def _softmax_function(c: Call) -> Info:
    return _softmax_over(c, c.arg(1, "dim"))


@function_rule(F.layer_norm)
def _layer_norm_function(c: Call) -> Info:
    return Info(per_position(c.f, c.lay, _last_dims(c.lay, len(c.arg(1, "normalized_shape")))), c.lay)


@function_rule(F.batch_norm, "stochastic_depth")
def _keeps_function(c: Call) -> Info:
    return Info(c.f, c.lay)  # batch_norm in eval is an affine map per channel


@function_rule(F.group_norm, F.instance_norm)
def _statistics_function(c: Call) -> Info:
    return Info(made_global(c.f), c.lay)


@function_rule(F.linear)
def _linear_function(c: Call) -> Info:
    if c.info(c.arg(1, "weight")).field is not None:
        return Info(unknown(join(c.fields)), None)
    return _linear_module(c)


@function_rule("matmul", "bmm", "mm", operator.matmul)
def _matmul(c: Call) -> Info:
    a, b = (c.info(v) for v in c.args[:2])
    fields = [a.field, b.field]
    if b.field is None and a.layout is not None:  # input @ weights: a product over a's last dim, per position
        return Info(per_position(a.field, a.layout, [len(a.layout) - 1]), last_to(a.layout, "c"))
    if a.layout is None or b.layout is None:
        return Info(unknown(join(fields)), None)
    if a.field is None:  # weights @ input: over b's second-to-last dim
        return Info(per_position(b.field, b.layout, [len(b.layout) - 2] if len(b.layout) >= 2 else None), b.layout)
    # two inputs (attention): the product pairs positions of one with positions of the other
    labels = set(a.layout + b.layout)
    out = a.layout[:-1] + b.layout[-1:]
    if "x" in labels or labels & {"h", "w"}:
        return Info(unknown(join(fields)), out)  # positions within windows, or along one axis: measure
    if labels & set(WHOLE):
        return Info(made_global(join(fields)), out)
    return Info(join(fields), out)


@function_rule(F.scaled_dot_product_attention)
def _attention_function(c: Call) -> Info:
    k = c.info(c.args[1]).layout  # over the keys' positions, dim -2
    return Info(over_positions(join(c.fields), k[-2] if k and len(k) >= 2 else None), c.lay)


@function_rule("einsum")
def _einsum(c: Call) -> Info:
    eq, ops = c.args[0], list(c.args[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops = list(ops[0])
    infos = [c.info(o) for o in ops]
    fields = [i.field for i in infos]
    if not isinstance(eq, str) or "->" not in eq or "." in eq:
        return Info(unknown(join(fields)), None)
    ins, out = eq.replace(" ", "").split("->")
    terms = ins.split(",")
    letter: dict[str, str] = {}
    for term, info in zip(terms, infos):
        if info.field is None:
            continue
        if info.layout is None or len(info.layout) != len(term):
            return Info(unknown(join(fields)), None)
        for ch, lab in zip(term, info.layout):
            letter[ch] = lab if letter.get(ch, lab) == lab else "x"
    varying = [i for i in infos if i.field is not None]
    summed = set("".join(terms)) - set(out)
    layout = tuple(letter.get(ch, "c") for ch in out)
    involved = set(letter.values()) if len(varying) > 1 else {letter.get(ch, "c") for ch in summed}
    if "x" in involved or involved & {"h", "w"} and not {"h", "w"} <= involved:
        return Info(unknown(join(fields)), layout)
    if involved & set(SPATIAL):
        return Info(made_global(join(fields)), layout)
    return Info(join(fields), layout)


@function_rule("cat", "concat", "concatenate")
def _cat(c: Call) -> Info:
    infos = [c.info(t) for t in c.args[0]]
    varying = [i for i in infos if i.field is not None]
    lay = next((i.layout for i in varying if i.layout is not None), None)
    fields = [i.field for i in infos]
    if lay is None:
        return Info(unknown(join(fields)), None)
    if not spatial(lay[dim(c.arg(1, "dim", 0), len(lay))]):
        return Info(join(fields), lay)
    if len(varying) == 1:  # a learned token put before the positions (a class token): positions keep their field
        return Info(varying[0].field, lay)
    return Info(unknown(join(fields)), lay)


@function_rule("chunk", "split", "unbind", "tensor_split")
def _split(c: Call) -> Info:
    lay = c.lay
    d = c.arg(2, "dim", 0)
    if lay is None or spatial(lay[dim(d, len(lay))]):
        return Info(unknown(c.f), None)
    if c.name == "unbind":
        return Info(c.f, tuple(v for i, v in enumerate(lay) if i != dim(d, len(lay))))
    return Info(c.f, lay)


@function_rule(F.pad, "pad")
def _pad(c: Call) -> Info:
    f, lay = c.f, c.lay
    pad, mode = c.arg(1, "pad"), c.arg(2, "mode", "constant")
    if lay is None or not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
        return Info(unknown(f), lay)
    for k in range(0, len(pad), 2):
        d = len(lay) - 1 - k // 2
        if lay[d] in ("h", "w") and isinstance(f, Field):
            if mode != "constant" and (pad[k] or pad[k + 1]):
                return Info(unknown(f), lay)  # reflection/replication read inside the map
            f = f.shifted(0 if lay[d] == "h" else 1, -pad[k])
        elif (pad[k] or pad[k + 1]) and spatial(lay[d]):
            return Info(unknown(f), lay)
    return Info(f, lay)


@function_rule("_patch_merging_pad")
def _patch_merging(c: Call) -> Info:
    """torchvision swin: 2x2 neighbours stacked on features (stride 2, NHWC)."""
    if c.lay is not None and c.lay[1:3] == ("h", "w") and isinstance(c.f, Field):
        return Info(c.f.through((2, 2), (2, 2)), c.lay)
    return Info(unknown(c.f), c.lay)


@function_rule(operator.getitem)
def _getitem(c: Call) -> Info:
    src, idx, x = c.args[0], c.args[1], c.x
    if shape_of(src) is None:  # an item of a tuple (chunk, split, an attention's (output, weights))
        return Info(x.field, x.layout)
    lay = x.layout
    if lay is None:
        return Info(unknown(x.field), None)
    idx = idx if isinstance(idx, tuple) else (idx,)
    if any(i is Ellipsis for i in idx):
        k = idx.index(Ellipsis)
        rest = len([i for i in idx if i is not None and i is not Ellipsis])
        idx = idx[:k] + (slice(None),) * (len(lay) - rest) + idx[k + 1 :]
    f, out, d = x.field, [], 0
    for i in idx:
        if i is None:
            out.append("1")
            continue
        if d >= len(lay):
            return Info(unknown(f), None)
        if isinstance(i, int):
            d += 1  # one position of this axis: its field is that of any position
            continue
        if not isinstance(i, slice):
            return Info(unknown(f) if spatial(lay[d]) else f, None)  # a tensor index
        if not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
            return Info(unknown(f), None)
        size = shape_of(src) or ()
        f = _sliced(f, lay[d], i, size[d] if lay[d] in ("h", "w") else 0)
        out.append(lay[d])
        d += 1
    return Info(f, tuple(out) + tuple(lay[d:]))


def _sliced(f, label: str, i: slice, size: int):
    """The field of a slice along one axis: rows or columns move the offset, part of the tokens is measured."""
    if label in ("h", "w") and isinstance(f, Field):
        start = 0 if i.start is None else (i.start + size if i.start < 0 else i.start)
        return f.shifted(0 if label == "h" else 1, start, i.step or 1)
    if label in ("s", "x") and (i.start or i.step not in (None, 1)) and f is not GLOBAL:
        return unknown(f)
    return f
