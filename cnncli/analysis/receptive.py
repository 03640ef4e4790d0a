"""Receptive field, jump and offset of every layer of a torch model, traced with torch.fx.

Each FX node carries a field and a layout: which of its tensor's dimensions are the batch (`n`), features (`c`),
image rows and columns (`h`, `w`), the two flattened into tokens (`s`), a whole map flattened with its features
(`f`, what a classifier's Linear reads), or another mix (`x`, e.g. windows cut out of the map); a size-1 dimension
is `1`.

- Sliding windows (convolutions, pooling) advance the field with the arithmetic of `cnn shape`; padding and
  cropping move its offset.
- Operations on features only keep the field: activations, normalisation over channels (BatchNorm, LayerNorm over
  the last dimension after a permute), a Linear or matrix product applied per position, layer scale, dropout and
  stochastic depth, reshapes and permutes that keep the image axes apart.
- Element-wise merges (residual additions, concatenation along features) take the union of their inputs' windows.
- Operations that mix every position make the field GLOBAL: an adaptive pooling whose window is the whole map, a
  mean over the image axes, squeeze-and-excitation (a global pool multiplied back in), self-attention, a Linear over
  a flattened map, GroupNorm's statistics. Anything computed from a global value is global.
- An operation not listed (a roll, a window partition, an upsampling, a custom kernel) makes the field UNKNOWN:
  `cnn summary` measures those layers instead (`measure_field`), and says so.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

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


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class Info:
    """What one FX node computes: its field (a Field, GLOBAL, UNKNOWN, or None for values that do not depend on the
    input) and the layout of its tensor."""

    field: object = None
    layout: tuple | None = None


def trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Symbolically trace (in eval mode) and propagate shapes of `example` through the graph."""
    was_training = model.training
    model.eval()
    try:
        gm = torch.fx.symbolic_trace(model)
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    finally:
        model.train(was_training)
    return gm


def _meta(node) -> object:
    return node.meta.get("tensor_meta") if isinstance(node, torch.fx.Node) else None


def _shape(node) -> tuple | None:
    meta = _meta(node)
    return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None


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


def _through(f, *args, **kw):
    return f.through(*args, **kw) if isinstance(f, Field) else f


def _made_global(f):
    """A reduction over every position: global, unless nothing depends on the input."""
    return None if f is None else GLOBAL


def _unknown(f):
    return f if f is None or f is GLOBAL else UNKNOWN


def _relabel(layout, shape) -> tuple | None:
    """A layout with size-1 image axes marked `1` (they hold one position)."""
    if layout is None or shape is None or len(layout) != len(shape):
        return layout
    return tuple("1" if (d == 1 and lab in SPATIAL) else lab for lab, d in zip(layout, shape))


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
        gi, gj, pa, pb = [], [], 1, 1
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


def _reshape_layout(layout, in_shape, out_shape) -> tuple | None:
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


def _spatial(label) -> bool:
    return label in SPATIAL


def _dim(d, ndim: int) -> int:
    return d + ndim if d < 0 else d


def _dims(arg, ndim: int) -> list[int] | None:
    if arg is None:
        return None
    if isinstance(arg, int):
        return [_dim(arg, ndim)]
    if isinstance(arg, (list, tuple)) and all(isinstance(d, int) for d in arg):
        return [_dim(d, ndim) for d in arg]
    return None


class _Analysis:
    """Walks a shape-propagated graph once, giving every node an Info."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.infos: dict[torch.fx.Node, Info] = {}

    def run(self) -> dict[torch.fx.Node, Info]:
        first = True
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = _shape(node)
                if first and shape is not None and len(shape) == 4:
                    info = Info(Field(), ("n", "c", "h", "w"))
                else:
                    info = Info(None, None)
                first = False
            elif node.op == "get_attr":
                info = Info(None, None)
            elif node.op == "output":
                info = self.info(node.args[0])
            else:
                try:
                    info = self.node(node)
                except Exception:  # a rule that does not fit this call: measure rather than guess
                    info = Info(_unknown(join(self.arg_fields(node))), None)
                if info.layout is not None:
                    info = Info(info.field, _relabel(info.layout, _shape(node)))
            self.infos[node] = info
        return self.infos

    def info(self, a) -> Info:
        if isinstance(a, torch.fx.Node):
            return self.infos.get(a, Info())
        if isinstance(a, (list, tuple)):
            parts = [self.info(x) for x in a]
            return Info(join(p.field for p in parts), parts[0].layout if parts else None)
        return Info()

    def arg_fields(self, node) -> list:
        return [self.infos[a].field for a in node.all_input_nodes if a in self.infos]

    def node(self, node) -> Info:
        if _meta(node) is None and node.target is not operator.getitem:
            return Info(None, None)  # not a tensor (a size, a shape): carries no field
        if node.op == "call_module":
            return self.module(self.modules[node.target], node)
        return self.function(node)

    # ------------------------------------------------------------------------------------------------ modules

    def module(self, m: nn.Module, node) -> Info:
        x = self.info(node.args[0]) if node.args else Info()
        f, lay = x.field, x.layout
        in_shape, out_shape = _shape(node.args[0]) if node.args else None, _shape(node)
        image = lay is not None and len(lay) == 4 and lay[2:] in (("h", "w"), ("h", "1"), ("1", "w"), ("1", "1"))
        if isinstance(m, nn.Conv2d):
            if not image:
                return Info(_unknown(f), lay)
            pad = m.padding
            if isinstance(pad, str):
                pad = (0, 0) if pad == "valid" else tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
            return Info(_through(f, m.kernel_size, m.stride, pad, m.dilation), lay)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
            if not image:
                return Info(_unknown(f), lay)
            k = _pair(m.kernel_size)
            s = _pair(m.stride if m.stride else m.kernel_size)
            return Info(_through(f, k, s, _pair(getattr(m, "padding", 0)), _pair(getattr(m, "dilation", 1))), lay)
        if isinstance(m, nn.ConvTranspose2d):
            if not image or not isinstance(f, Field):
                return Info(_unknown(f), lay)
            return Info(f.through_transpose(m.kernel_size, m.stride, m.padding, m.dilation), lay)
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return Info(self._adaptive(f, lay, in_shape, out_shape), lay)
        if isinstance(m, nn.Linear):
            return Info(self._per_position(f, lay, [len(lay) - 1] if lay else None), _last_to(lay, "c"))
        if isinstance(m, nn.Bilinear):
            return Info(_unknown(join(self.arg_fields(node))), lay)
        if isinstance(m, nn.LayerNorm):
            n = len(m.normalized_shape)
            return Info(self._per_position(f, lay, list(range(len(lay) - n, len(lay))) if lay else None), lay)
        if isinstance(m, (nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d)):
            return Info(_made_global(f) if lay is None or any(_spatial(d) for d in lay) else f, lay)
        if isinstance(m, nn.MultiheadAttention):
            fields = self.arg_fields(node)
            seq = 1 if m.batch_first else 0
            if lay is None or len(lay) < 2:
                return Info(_unknown(join(fields)), lay)
            return Info(_over_positions(join(fields), lay[seq]), lay)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return self._softmax(f, lay, m.dim)
        if isinstance(m, nn.Flatten):
            return Info(f, _reshape_layout(lay, in_shape, out_shape))
        if isinstance(m, nn.Unflatten):
            return Info(f, _reshape_layout(lay, in_shape, out_shape))
        if isinstance(m, nn.ChannelShuffle):
            return Info(f, lay)
        if isinstance(m, _POINTWISE_MODULES):
            return Info(join(self.arg_fields(node)), lay)
        # not covered: measured; a result shaped like its input is taken to keep its layout
        return Info(
            _unknown(join(self.arg_fields(node))), lay if out_shape is not None and out_shape == in_shape else None
        )

    def _adaptive(self, f, lay, in_shape, out_shape):
        if f is None or in_shape is None or out_shape is None or len(in_shape) != 4:
            return _unknown(f)
        (ih, iw), (oh, ow) = in_shape[2:], out_shape[2:]
        if (oh, ow) == (1, 1):
            return _made_global(f)
        if (ih, iw) == (1, 1):
            return f  # every output cell reads the one input cell
        if ih % oh == 0 and iw % ow == 0:
            k = (ih // oh, iw // ow)
            return _through(f, k, k)
        return _unknown(f)  # overlapping windows of varying size: measure

    def _per_position(self, f, lay, dims):
        """An operation over the dims `dims` of each position (a Linear, a LayerNorm, a matrix product with weights):
        the field stays when those are feature dims, and becomes global when they hold the image positions."""
        if dims is None or lay is None:
            return _unknown(f)
        labels = {lay[d] for d in dims}
        if labels <= {"c", "1", "n"}:
            return f
        if "x" not in labels and (labels & set(WHOLE) or {"h", "w"} <= labels):
            return _made_global(f)
        return _unknown(f)

    def _softmax(self, f, lay, dim) -> Info:
        if lay is None or dim is None:
            return Info(_unknown(f), lay)
        label = lay[_dim(dim, len(lay))]
        return Info(_made_global(f) if label in WHOLE else _unknown(f) if _spatial(label) else f, lay)

    def _reduce(self, node, f, lay) -> Info:
        """mean/sum/amax... over `dim`: global when an image axis is reduced."""
        if lay is None:
            return Info(_unknown(f), None)
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = list(range(len(lay))) if dim is None else _dims(dim, len(lay))
        if dims is None:
            return Info(_unknown(f), None)
        keep = node.kwargs.get(
            "keepdim", node.args[2] if len(node.args) > 2 and isinstance(node.args[2], bool) else False
        )
        labels = {lay[d] for d in dims}
        if "x" in labels or (labels & {"h", "w"} and not ({"h", "w"} <= labels)):
            field = _unknown(f)  # a reduction over part of the positions (a window, one axis)
        else:
            field = _made_global(f) if labels & set(SPATIAL) else f
        layout = (
            tuple("1" if i in dims else lab for i, lab in enumerate(lay))
            if keep
            else tuple(lab for i, lab in enumerate(lay) if i not in dims)
        )
        return Info(field, layout)

    # ---------------------------------------------------------------------------------------------- functions

    def function(self, node) -> Info:
        t = node.target
        name = t if isinstance(t, str) else getattr(t, "__name__", "")
        args = node.args
        x = self.info(args[0]) if args else Info()
        f, lay = x.field, x.layout
        in_shape, out_shape = (_shape(args[0]) if args else None), _shape(node)
        fields = self.arg_fields(node)
        if all(v is None for v in fields):
            return Info(None, _shape_layout(out_shape))  # built from parameters and constants only
        if t is operator.getitem:
            return self._getitem(node, x)
        if name in _POINTWISE_NAMES or t in _POINTWISE_FUNCS:
            return Info(join(fields), _broadcast_layout(node, self))
        if name in _LAYOUT_OPS:
            return Info(f, _moved_layout(node, name, lay, in_shape, out_shape)) if lay else Info(_unknown(f), None)
        if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return Info(self._adaptive(f, lay, in_shape, out_shape), lay)
        if t in (F.max_pool2d, F.avg_pool2d, F.conv2d):
            return self._window_function(node, f, lay)
        if name in ("mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"):
            if name in ("max", "min") and len(args) > 1 and isinstance(args[1], torch.fx.Node):
                return Info(join(fields), _broadcast_layout(node, self))  # element-wise max of two tensors
            return self._reduce(node, f, lay)
        if name in ("softmax", "log_softmax", "softmin"):
            dim = args[1] if len(args) > 1 else node.kwargs.get("dim")
            return self._softmax(f, lay, dim)
        if t in (F.layer_norm, F.group_norm, F.instance_norm, F.batch_norm):
            return self._norm(node, f, lay)
        if t is F.linear:
            w = self.info(args[1] if len(args) > 1 else node.kwargs["weight"])
            if w.field is not None:
                return Info(_unknown(join(fields)), None)
            return Info(self._per_position(f, lay, [len(lay) - 1] if lay else None), _last_to(lay, "c"))
        if name in ("matmul", "bmm", "mm") or t is operator.matmul:
            return self._matmul(node)
        if t is F.scaled_dot_product_attention:  # over the keys' positions, dim -2
            k = self.info(args[1])
            return Info(_over_positions(join(fields), k.layout[-2] if k.layout and len(k.layout) >= 2 else None), lay)
        if name == "einsum":
            return self._einsum(node)
        if name in ("cat", "concat", "concatenate"):
            return self._cat(node)
        if name in ("chunk", "split", "unbind", "tensor_split"):
            dim = args[2] if len(args) > 2 else node.kwargs.get("dim", 0)
            if lay is not None and not _spatial(lay[_dim(dim, len(lay))]):
                layout = lay if name != "unbind" else tuple(v for i, v in enumerate(lay) if i != _dim(dim, len(lay)))
                return Info(f, layout)
            return Info(_unknown(f), None)
        if t is F.pad or name == "pad":
            return self._pad(node, f, lay)
        if name == "stochastic_depth":
            return Info(f, lay)
        if name == "_patch_merging_pad":  # torchvision swin: 2x2 neighbours stacked on features (stride 2, NHWC)
            if lay is not None and lay[1:3] == ("h", "w") and isinstance(f, Field):
                return Info(f.through((2, 2), (2, 2)), lay)
            return Info(_unknown(f), lay)
        return Info(_unknown(join(fields)), lay if out_shape is not None and out_shape == in_shape else None)

    def _norm(self, node, f, lay) -> Info:
        """Functional normalisations: layer_norm over its last dims, group/instance norm over the map (global),
        batch_norm per channel (eval: an affine map)."""
        if node.target is F.layer_norm:
            n = len(node.args[1] if len(node.args) > 1 else node.kwargs["normalized_shape"])
            return Info(self._per_position(f, lay, list(range(len(lay) - n, len(lay))) if lay else None), lay)
        if node.target is F.batch_norm:
            return Info(f, lay)
        return Info(_made_global(f), lay)

    def _getitem(self, node, x: Info) -> Info:
        src, idx = node.args[0], node.args[1]
        if _shape(src) is None:  # an item of a tuple (chunk, split, an attention's (output, weights))
            return Info(x.field, x.layout)
        lay = x.layout
        if lay is None:
            return Info(_unknown(x.field), None)
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
                return Info(_unknown(f), None)
            lab = lay[d]
            if isinstance(i, int):
                d += 1  # one position of this axis: its field is that of any position
                continue
            if isinstance(i, slice):
                if not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
                    return Info(_unknown(f), None)
                if lab in ("h", "w") and isinstance(f, Field):
                    size = _shape(src)[d]
                    start = 0 if i.start is None else (i.start + size if i.start < 0 else i.start)
                    f = f.shifted(0 if lab == "h" else 1, start, i.step or 1)
                elif lab in ("s", "x") and (i.start or i.step not in (None, 1)) and f is not GLOBAL:
                    f = _unknown(f)
                out.append(lab)
                d += 1
                continue
            return Info(_unknown(f) if _spatial(lab) else f, None)  # a tensor index
        out.extend(lay[d:])
        return Info(f, tuple(out))

    def _window_function(self, node, f, lay) -> Info:
        t, args, kw = node.target, node.args, node.kwargs
        if lay is None or len(lay) != 4 or lay[1] in SPATIAL:
            return Info(_unknown(f), lay)

        def arg(i, key, default):
            return args[i] if len(args) > i else kw.get(key, default)

        if t is F.conv2d:
            w = _shape(arg(1, "weight", None))
            if w is None:
                return Info(_unknown(f), lay)
            k = tuple(w[2:])
            s, p, d = _pair(arg(3, "stride", 1)), arg(4, "padding", 0), _pair(arg(5, "dilation", 1))
            if isinstance(p, str):
                p = (0, 0) if p == "valid" else tuple(dd * (kk - 1) // 2 for dd, kk in zip(d, k))
            return Info(_through(f, k, s, _pair(p), d), lay)
        k = _pair(arg(1, "kernel_size", None))
        s = arg(2, "stride", None)
        s = k if not s else _pair(s)
        p = _pair(arg(3, "padding", 0))
        d = _pair(arg(4, "dilation", 1)) if t is F.max_pool2d else (1, 1)
        return Info(_through(f, k, s, p, d), lay)

    def _matmul(self, node) -> Info:
        a, b = (self.info(v) for v in node.args[:2])
        fields = [a.field, b.field]
        if a.layout is None or b.layout is None:
            if b.field is None and a.layout is not None:
                pass
            else:
                return Info(_unknown(join(fields)), None)
        if b.field is None:  # input @ weights: a product over a's last dim, per position
            return Info(self._per_position(a.field, a.layout, [len(a.layout) - 1]), _last_to(a.layout, "c"))
        if a.field is None:  # weights @ input: over b's second-to-last dim
            dims = [len(b.layout) - 2] if len(b.layout) >= 2 else None
            return Info(self._per_position(b.field, b.layout, dims), b.layout)
        # two inputs (attention): the product pairs positions of one with positions of the other
        labels = set(a.layout + b.layout)
        out = a.layout[:-1] + b.layout[-1:]
        if "x" in labels or labels & {"h", "w"}:
            return Info(_unknown(join(fields)), out)  # positions within windows, or along one axis: measure
        if labels & set(WHOLE):
            return Info(_made_global(join(fields)), out)
        return Info(join(fields), out)

    def _einsum(self, node) -> Info:
        eq, ops = node.args[0], node.args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        infos = [self.info(o) for o in ops]
        fields = [i.field for i in infos]
        if not isinstance(eq, str) or "->" not in eq or "." in eq:
            return Info(_unknown(join(fields)), None)
        ins, out = eq.replace(" ", "").split("->")
        terms = ins.split(",")
        letter: dict[str, str] = {}
        for term, info in zip(terms, infos):
            if info.field is None:
                continue
            if info.layout is None or len(info.layout) != len(term):
                return Info(_unknown(join(fields)), None)
            for ch, lab in zip(term, info.layout):
                letter[ch] = lab if letter.get(ch, lab) == lab else "x"
        varying = [i for i in infos if i.field is not None]
        summed = set("".join(terms)) - set(out)
        layout = tuple(letter.get(ch, "c") for ch in out)
        involved = set(letter.values()) if len(varying) > 1 else {letter.get(ch, "c") for ch in summed}
        if "x" in involved or involved & {"h", "w"} and not {"h", "w"} <= involved:
            return Info(_unknown(join(fields)), layout)
        if involved & set(SPATIAL):
            return Info(_made_global(join(fields)), layout)
        return Info(join(fields), layout)

    def _cat(self, node) -> Info:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        infos = [self.info(t) for t in tensors]
        varying = [i for i in infos if i.field is not None]
        lay = next((i.layout for i in varying if i.layout is not None), None)
        fields = [i.field for i in infos]
        if lay is None:
            return Info(_unknown(join(fields)), None)
        d = _dim(dim, len(lay))
        if not _spatial(lay[d]):
            return Info(join(fields), lay)
        if len(varying) == 1:  # a learned token put before the positions (a class token): positions keep their field
            return Info(varying[0].field, lay)
        return Info(_unknown(join(fields)), lay)

    def _pad(self, node, f, lay) -> Info:
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        if lay is None or not isinstance(pad, (list, tuple)) or not all(isinstance(p, int) for p in pad):
            return Info(_unknown(f), lay)
        for k in range(0, len(pad), 2):
            d = len(lay) - 1 - k // 2
            if lay[d] in ("h", "w") and isinstance(f, Field):
                if mode != "constant" and (pad[k] or pad[k + 1]):
                    return Info(_unknown(f), lay)  # reflection/replication read inside the map
                f = f.shifted(0 if lay[d] == "h" else 1, -pad[k])
            elif (pad[k] or pad[k + 1]) and _spatial(lay[d]):
                return Info(_unknown(f), lay)
        return Info(f, lay)


_LAYOUT_OPS = {
    "permute",
    "transpose",
    "swapaxes",
    "swapdims",
    "movedim",
    "moveaxis",
    "flatten",
    "view",
    "reshape",
    "unflatten",
    "view_as",
    "reshape_as",
    "unsqueeze",
    "squeeze",
    "expand",
    "expand_as",
    "contiguous",
    "clone",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "type",
    "type_as",
    "detach",
    "requires_grad_",
    "_assert",
}


def _moved_layout(node, name: str, lay: tuple, in_shape, out_shape) -> tuple | None:
    """The layout after an operation that moves, merges or splits dimensions without mixing positions."""
    args = node.args
    if name == "permute":
        dims = (
            args[1:]
            if len(args) > 1 and isinstance(args[1], int)
            else (args[1] if len(args) > 1 else node.kwargs["dims"])
        )
        return tuple(lay[_dim(d, len(lay))] for d in dims)
    new = list(lay)
    if name in ("transpose", "swapaxes", "swapdims"):
        a, b = _dim(args[1], len(lay)), _dim(args[2], len(lay))
        new[a], new[b] = new[b], new[a]
        return tuple(new)
    if name in ("movedim", "moveaxis"):
        new.insert(_dim(args[2], len(lay)), new.pop(_dim(args[1], len(lay))))
        return tuple(new)
    if name in ("flatten", "view", "reshape", "unflatten", "view_as", "reshape_as"):
        return _reshape_layout(lay, in_shape, out_shape)
    return _shape_layout_like(lay, in_shape, out_shape)


def _over_positions(f, label):
    """The field after mixing along a dimension labelled `label` (attention over its positions): global over a whole
    map, measured over part of one (windows, one axis), unchanged over features; unknown without a label."""
    if label is None:
        return _unknown(f)
    return _made_global(f) if label in WHOLE else _unknown(f) if _spatial(label) else f


def _last_to(lay, label) -> tuple | None:
    return None if lay is None else lay[:-1] + (label,)


def _shape_layout(shape) -> tuple | None:
    return None if shape is None else tuple("1" if d == 1 else "c" for d in shape)


def _shape_layout_like(lay, in_shape, out_shape) -> tuple | None:
    """Layout after squeeze/unsqueeze/expand: the dims of size > 1 keep their labels in order."""
    if lay is None or in_shape is None or out_shape is None:
        return lay
    if len(in_shape) == len(out_shape):
        return lay
    labels = [lab for lab, d in zip(lay, in_shape) if d != 1]
    out = []
    for d in out_shape:
        out.append(labels.pop(0) if d != 1 and labels else ("1" if d == 1 else "n"))
    return tuple(out)


def _broadcast_layout(node, an: _Analysis) -> tuple | None:
    """The layout of an element-wise result: that of the input with the most informative layout of full rank."""
    out = _shape(node)
    best = None
    for a in node.all_input_nodes:
        info = an.infos.get(a)
        if info is None or info.layout is None or info.field is None:
            continue
        lay = info.layout
        if out is not None and len(lay) < len(out):
            lay = ("1",) * (len(out) - len(lay)) + lay
        if best is None or sum(_spatial(v) for v in lay) > sum(_spatial(v) for v in best):
            best = lay
    return best


_POINTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Softsign,
    nn.Tanhshrink,
    nn.Threshold,
    nn.LogSigmoid,
    nn.GLU,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.LocalResponseNorm,
)
_POINTWISE_NAMES = {
    "add",
    "sub",
    "mul",
    "div",
    "truediv",
    "floordiv",
    "neg",
    "pow",
    "sqrt",
    "rsqrt",
    "exp",
    "log",
    "abs",
    "clamp",
    "clip",
    "relu",
    "relu_",
    "relu6",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "mish",
    "softplus",
    "dropout",
    "dropout2d",
    "add_",
    "mul_",
    "sub_",
    "div_",
    "sigmoid_",
    "iadd",
    "imul",
    "isub",
    "itruediv",
    "where",
    "maximum",
    "minimum",
    "erf",
    "reciprocal",
    "square",
    "masked_fill",
    "sign",
    "floor",
    "ceil",
    "round",
    "addcmul",
    "lerp",
    "hardswish_",
    "clamp_",
    "clamp_min",
    "clamp_max",
    "selu",
    "celu",
    "glu",
    "logsigmoid",
    "softsign",
    "prelu",
    "channel_shuffle",
    "native_channel_shuffle",
    "eq",
    "ne",
    "gt",
    "lt",
    "ge",
    "le",
    "logical_not",
    "logical_and",
    "logical_or",
    "fill_",
    "zero_",
    "masked_fill_",
    "mul_add",
}
_POINTWISE_FUNCS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.neg,
    operator.pow,
    operator.iadd,
    operator.imul,
    operator.isub,
    operator.itruediv,
    operator.floordiv,
}


def node_infos(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, Info]:
    """An Info for every node of a shape-propagated graph."""
    return _Analysis(gm).run()


@dataclass
class Fields:
    """The traced fields of a model: {qualified module name: field at its (last) output}, the model output's field,
    and the layout of each module's output (to measure the UNKNOWN ones)."""

    per_module: dict
    output: object
    layouts: dict


def model_fields(
    model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu"
) -> Fields | None:
    """Fields of every module of `model` on an input of `input_size` (None if the model cannot be traced)."""
    try:
        gm = trace(model, torch.zeros(1, *input_size, device=device))
    except Exception:
        return None
    infos = node_infos(gm)
    per_module, layouts = {}, {}
    out = None
    for node, info in infos.items():
        if node.op == "call_module":
            scope = node.target
        elif node.op in ("call_function", "call_method"):
            scope = _scope_of(node)
        else:
            scope = ""
        if scope and _shape(node) is not None:
            parts = scope.split(".")
            for i in range(1, len(parts) + 1):  # a container's field is that of the last module it ran
                per_module[".".join(parts[:i])] = info.field
                layouts[".".join(parts[:i])] = info.layout
        if node.op == "output":
            out = info.field
    return Fields(per_module, out, layouts)


def module_fields(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[dict[str, object], object] | None:
    """({qualified module name: field at its (last) output}, field of the model output); None if untraceable.
    Fields are `cnncli.analysis.arith.Field`, GLOBAL or UNKNOWN."""
    got = model_fields(model, input_size)
    return None if got is None else (got.per_module, got.output)


def _scope_of(node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return ""


# ------------------------------------------------------------------------------------------------ measurement


def centre_unit(out: torch.Tensor, layout: tuple | None, step: int = 0) -> torch.Tensor | None:
    """The centre unit of a module output (summed over its features; `step` cells down and right of the centre), for
    the layouts a map can have: NCHW, NHWC, or tokens (N, positions, C); None for other outputs."""
    lay = layout or (("n", "c", "h", "w") if out.dim() == 4 else None)
    if lay is None or len(lay) != out.dim():
        return None
    index = []
    for lab, size in zip(lay, out.shape):
        if lab == "n":
            index.append(0)
        elif lab == "s":  # tokens: the centre of a square map, after a class token if there is one
            index.append(_centre_token(size))
        elif lab in SPATIAL or lab == "1":
            index.append(min(size // 2 + (step if lab in ("h", "w") else 0), size - 1))
        else:
            index.append(slice(None))
    if not any(v in SPATIAL or v == "1" for v in lay):
        return out[0].sum()  # a vector per image (logits): every element has the same field
    return out[tuple(index)].sum()


def _centre_token(n: int) -> int:
    import math

    for extra in (0, 1, 2):  # no token, a class token, class and distillation tokens ahead of the map
        side = math.isqrt(n - extra)
        if side * side == n - extra and side > 0:
            return extra + (side // 2) * side + side // 2
    return n // 2


def meta_twin(model: nn.Module) -> nn.Module | None:
    """A copy of `model` whose tensors live on the meta device (None when it cannot be made)."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return model
    try:
        memo = {
            id(t): (
                nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter)
                else torch.empty_like(t, device="meta")
            )
            for t in [*model.parameters(), *model.buffers()]
        }  # no data is copied
        return copy.deepcopy(model, memo)
    except Exception:
        return None


def no_inplace(model: nn.Module) -> nn.Module:
    """In-place activations would overwrite the outputs a hook keeps (and the graph a gradient needs)."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


class _Enough(Exception):
    pass


def measure_fields(
    model: nn.Module,
    input_size: tuple[int, int, int],
    names: list[str],
    layouts: dict | None = None,
    dtype: torch.dtype = torch.float64,
    jumps: bool = False,
    copy_model: bool = True,
    whole: bool = False,
) -> dict[str, dict]:
    """Measure the field of the centre unit of each named module's output: the extent of the input gradient, on a
    random input in `dtype` (float64 so that small contributions do not underflow to zero). The forward pass stops
    once every named module has run.

    {name: {"receptive_field": [h, w], "clipped": [h, w] (the gradient reached the image border on that axis, so the
    field may be larger), "whole": (with `whole`) bool: the centre unit reads every row and column that all the module's units
    together read (a global operation; a network may leave the last rows of an image unread), "jump": [h, w] (with
    `jumps`: how far the field moves from the centre unit to its lower-right neighbour; None where it cannot be
    seen)}}."""
    layouts = layouts or {}
    work = no_inplace((copy.deepcopy(model) if copy_model else model).to(dtype=dtype).eval())
    modules = dict(work.named_modules())
    wanted = [n for n in names if n in modules]
    outs: dict[str, torch.Tensor] = {}

    def hook(m, a, r, n):
        outs[n] = r
        if all(k in outs for k in wanted):
            raise _Enough

    hooks = [modules[n].register_forward_hook(lambda m, a, r, n=n: hook(m, a, r, n)) for n in wanted]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, *input_size, generator=gen, dtype=dtype).requires_grad_(True)
    try:
        work(x)
    except _Enough:
        pass
    finally:
        for h in hooks:
            h.remove()
    result = {}
    h, w = input_size[1:]
    for name in wanted:
        out = outs.get(name)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            continue
        lay = layouts.get(name) or (("n", "c", "h", "w") if out.dim() == 4 else ("n",) + ("c",) * (out.dim() - 1))
        ext = _extent(out, x, lay, 0)
        if ext is None:
            continue
        (r0, r1), (c0, c1) = ext
        clipped = [r0 == 0 or r1 == h - 1, c0 == 0 or c1 == w - 1]
        got = {"receptive_field": [r1 - r0 + 1, c1 - c0 + 1], "clipped": clipped, "whole": None, "jump": None}
        if whole:
            every = _extent(out, x, None, 0)  # what all the module's units together read
            got["whole"] = every == ext
        if jumps and lay is not None and "h" in lay and "w" in lay:
            nxt = _extent(out, x, lay, 1)
            if nxt is not None:
                got["jump"] = [
                    None if clipped[0] or nxt[0][1] == h - 1 else nxt[0][0] - r0,
                    None if clipped[1] or nxt[1][1] == w - 1 else nxt[1][0] - c0,
                ]
        result[name] = got
    return result


def _extent(out: torch.Tensor, x: torch.Tensor, layout, step: int):
    unit = centre_unit(out, layout, step) if layout is not None else out.sum()
    if unit is None:
        return None
    (grad,) = torch.autograd.grad(unit, x, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    mask = grad.detach().abs().sum(dim=(0, 1)) != 0
    rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
    if len(rows) == 0:
        return None
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))


__all__ = [
    "GLOBAL",
    "UNKNOWN",
    "Info",
    "Fields",
    "trace",
    "join",
    "node_infos",
    "model_fields",
    "module_fields",
    "measure_fields",
    "centre_unit",
]
