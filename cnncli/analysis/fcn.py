"""Classifier -> fully-convolutional network, and spatial class score maps.

A classifier's head is rewritten as convolutions: the first Linear after a flatten becomes a convolution whose
kernel covers the whole last feature map, each later Linear a 1x1 convolution; a global (adaptive) pooling becomes
a fixed pooling window the size of the training-size feature map, with stride 1. At the training size the new
network computes the same logits (one output cell); on a larger image it computes the classifier at every window
of the image at once, spaced by the network's output stride: a map of class scores.

The model is traced with torch.fx, so heads written with modules (nn.Flatten, nn.Linear) or with functions
(torch.flatten, F.adaptive_avg_pool2d, x.mean((2, 3))) are both found.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from cnncli.analysis.arith import Field
from cnncli.analysis.receptive import GLOBAL, module_fields, trace
from cnncli.checkpoint import Checkpoint
from cnncli.errors import UsageError, WorkFailed
from cnncli.models._manipulate import meta_twin

_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Sigmoid,
    nn.ELU,
    nn.Mish,
    nn.Dropout,
    nn.Dropout2d,
    nn.Identity,
)
_ELEMENTWISE_FUNCS = {F.relu, torch.relu, F.dropout, F.gelu, F.silu, torch.sigmoid, torch.tanh, F.relu6, F.hardswish}


class FullyConvolutional(nn.Module):
    """`body` (the classifier's feature extractor, unchanged) followed by `head` (its classifier as convolutions)."""

    def __init__(self, body: nn.Module, head: nn.Sequential):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x):
        return self.head(self.body(x))


@dataclass
class Conversion:
    model: FullyConvolutional
    training_size: tuple[int, int, int]
    stride: tuple
    receptive_field: tuple
    offset: tuple
    max_abs_diff: float | None
    steps: list[str]

    def as_dict(self) -> dict:
        rf = self.receptive_field if isinstance(self.receptive_field, str) else list(self.receptive_field)
        return {
            "training_size": list(self.training_size),
            "stride": list(self.stride),
            "receptive_field": rf,
            "offset": list(self.offset),
            "max_abs_diff": self.max_abs_diff,
            "steps": self.steps,
        }


def _describe(node, modules) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    name = getattr(node.target, "__name__", str(node.target))
    return f"{node.name} ({name})"


def _is_head_op(node, modules) -> str | None:
    """The kind of head operation a node is, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if isinstance(m, nn.Linear):
            return "linear"
        if isinstance(m, nn.Flatten):
            return "flatten"
        if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            return "adaptive"
        if isinstance(m, _ELEMENTWISE_MODULES):
            return "elementwise"
        return None
    if node.op == "call_function":
        if node.target is torch.flatten:
            return "flatten"
        if node.target in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
            return "adaptive"
        if node.target in _ELEMENTWISE_FUNCS:
            return "elementwise"
        return None
    if node.op == "call_method":
        if node.target in ("flatten", "view", "reshape"):
            return "flatten"
        if node.target == "mean":
            return "mean"
        if node.target in ("relu", "sigmoid", "tanh"):
            return "elementwise"
    return None


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _find_head(gm: torch.fx.GraphModule):
    """(feature node, head nodes in forward order); raises UsageError naming what it cannot convert."""
    modules = dict(gm.named_modules())
    out = next(n for n in gm.graph.nodes if n.op == "output")
    node = out.args[0]
    if not isinstance(node, torch.fx.Node):
        raise UsageError("cannot convert: the model does not return a single tensor of logits")
    chain = []
    while True:
        kind = _is_head_op(node, modules)
        shape = _shape(node)
        if kind is None:
            # reached the feature map: it must be 4-D; otherwise something unknown sits in the head
            if shape is not None and len(shape) == 4 and chain:
                break
            raise UsageError(
                f"cannot convert layer {_describe(node, modules)}: not a recognised classifier head op",
                "cnn fcn converts flatten + Linear and global pooling + Linear heads",
            )
        chain.append((node, kind))
        inputs = list(node.all_input_nodes)
        if len(inputs) != 1:
            raise UsageError(f"cannot convert layer {_describe(node, modules)}: it has {len(inputs)} inputs")
        node = inputs[0]
    chain.reverse()
    if not any(kind == "linear" for _, kind in chain):
        raise UsageError("cannot convert: the head has no Linear layer", "the model is already fully convolutional?")
    return node, chain


def _pool_layer(node, kind, modules, state, steps):
    """A global or adaptive pooling as a fixed window (stride 1 for global: it slides on larger images)."""
    desc = _describe(node, modules)
    in_shape = _shape(node.all_input_nodes[0])
    if kind == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))))
        if dims != (2, 3) or in_shape is None or len(in_shape) != 4:
            raise UsageError(f"cannot convert layer {desc}: only a mean over H and W is a global pool")
        out_hw, is_max = (1, 1), False
    else:
        m = modules.get(node.target) if node.op == "call_module" else None
        is_max = isinstance(m, nn.AdaptiveMaxPool2d) or node.target is F.adaptive_max_pool2d
        out_hw = tuple(_shape(node)[2:])
    ih, iw = in_shape[2:]
    if out_hw == (ih, iw):
        steps.append(f"{desc}: identity at the training size, removed")
        return None
    if ih % out_hw[0] or iw % out_hw[1]:
        raise UsageError(
            f"cannot convert layer {desc}: adaptive pooling {ih}x{iw} -> {out_hw[0]}x{out_hw[1]} does not divide evenly"
        )
    cls = nn.MaxPool2d if is_max else nn.AvgPool2d
    if out_hw == (1, 1):
        pool = cls((ih, iw), stride=1)
        steps.append(f"{desc}: global pool -> {cls.__name__} {ih}x{iw}, stride 1")
    else:
        k = (ih // out_hw[0], iw // out_hw[1])
        pool = cls(k, stride=k)
        steps.append(f"{desc}: adaptive pool -> {cls.__name__} {k[0]}x{k[1]}, stride {k[0]}x{k[1]}")
    state["map"] = out_hw
    if kind == "mean":
        state["flat_from"] = (state["c"], 1, 1)
    return pool


def _linear_as_conv(node, modules, state, steps):
    """The first Linear after a flatten covers the whole map (kernel = map size); later ones are 1x1."""
    desc = _describe(node, modules)
    lin = modules[node.target]
    if state["flat_from"] is not None:
        fc, fh, fw = state["flat_from"]
        if fc * fh * fw != lin.in_features:
            raise UsageError(f"cannot convert layer {desc}: {lin.in_features} inputs but the map is {fc}x{fh}x{fw}")
        kernel = (fh, fw)
        state["flat_from"] = None
    else:
        fc, kernel = lin.in_features, (1, 1)
        if state["c"] != fc:
            raise UsageError(f"cannot convert layer {desc}: expects {fc} features, the map has {state['c']} channels")
    conv = nn.Conv2d(fc, lin.out_features, kernel, bias=lin.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(lin.weight.view(lin.out_features, fc, *kernel))
        if lin.bias is not None:
            conv.bias.copy_(lin.bias)
    steps.append(
        f"{desc}: Linear({lin.in_features}, {lin.out_features}) -> Conv2d({fc}, {lin.out_features}, "
        f"kernel {kernel[0]}x{kernel[1]})"
    )
    state["c"] = lin.out_features
    return conv


def _head_modules(gm, feature, chain) -> tuple[list[nn.Module], list[str]]:
    """The head's operations as modules that work on maps of any size, and a description of each step."""
    modules = dict(gm.named_modules())
    c, h, w = _shape(feature)[1:]
    state = {"c": c, "map": (h, w), "flat_from": None}
    layers: list[nn.Module] = []
    steps: list[str] = []
    for node, kind in chain:
        if kind in ("adaptive", "mean"):
            layer = _pool_layer(node, kind, modules, state, steps)
        elif kind == "flatten":
            in_shape = _shape(node.all_input_nodes[0])
            if in_shape is not None and len(in_shape) == 4:
                state["flat_from"] = (in_shape[1], *in_shape[2:])
            steps.append(f"{_describe(node, modules)}: flatten removed (the next Linear becomes a convolution)")
            layer = None
        elif kind == "linear":
            layer = _linear_as_conv(node, modules, state, steps)
        elif node.op == "call_module":  # elementwise: the same operation on the map
            layer = modules[node.target]
        else:
            layer = _FunctionModule(node.target, node.args[1:], dict(node.kwargs))
        if layer is not None:
            layers.append(layer)
    return layers, steps


class _FunctionModule(nn.Module):
    def __init__(self, fn, args, kwargs):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, tuple(args), {k: v for k, v in kwargs.items() if k != "inplace"}

    def forward(self, x):
        return self.fn(x, *self.args, **self.kwargs)


def _body(gm: torch.fx.GraphModule, feature: torch.fx.Node) -> torch.fx.GraphModule:
    """The traced graph cut at the feature map."""
    g = torch.fx.Graph()
    env: dict = {}
    for node in gm.graph.nodes:
        if node.op == "output":
            break
        env[node] = g.node_copy(node, lambda n: env[n])
        if node is feature:
            break
    g.output(env[feature])
    body = torch.fx.GraphModule(gm, g)
    body.graph.eliminate_dead_code()
    body.delete_all_unused_submodules()
    body.recompile()
    return body


def to_fully_convolutional(
    model: nn.Module, input_size: tuple[int, int, int], *, verify: bool = True, tolerance: float = 1e-4
) -> Conversion:
    """Rewrite a classifier's head as convolutions; with `verify`, check identical logits at the training size."""
    if isinstance(model, FullyConvolutional):
        raise UsageError("the model is already fully convolutional", "give the classifier checkpoint")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a number >= 0, got {tolerance}")
    from cnncli.engine.runtime import check_finite_weights

    check_finite_weights(model, "the model")  # a NaN weight would fail the check as "logits differ by nan"
    model = model.eval()
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0))
    try:
        gm = trace(model, example)
    except Exception as e:
        raise UsageError(
            f"cannot trace the model with torch.fx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            "data-dependent control flow in forward() cannot be converted",
        ) from None
    feature, chain = _find_head(gm)
    layers, steps = _head_modules(gm, feature, chain)
    fcn = FullyConvolutional(_body(gm, feature), nn.Sequential(*layers)).eval()

    diff = _verified(model, fcn, example, tolerance) if verify else None
    traced = module_fields(fcn, input_size)
    if traced is None:
        raise UsageError("cannot compute the receptive field of the converted model")
    out_field = traced[1]
    if isinstance(out_field, Field):
        return Conversion(
            fcn, tuple(input_size), out_field.jump_value, out_field.receptive_field, out_field.offset, diff, steps
        )
    # squeeze-and-excitation or attention in the body: every score reads the whole image, not a window. The cells
    # still step by the body's stride; each is placed where the classifier's own input would be.
    return Conversion(
        fcn,
        tuple(input_size),
        _stride_by_probing(fcn, input_size),
        "global" if out_field is GLOBAL else "unknown",
        (0, 0),
        diff,
        steps,
    )


def _verified(model: nn.Module, fcn: nn.Module, example: torch.Tensor, tolerance: float) -> float:
    """Max |classifier - converted| on `example` (one cell at the training size); WorkFailed above the tolerance
    (relative to the logits' scale when they are larger than 1)."""
    with torch.no_grad():
        ref = model(example)
        got = fcn(example)
    if got.dim() != 4 or got.shape[2:] != (1, 1):
        raise WorkFailed(
            f"conversion check failed: output is {tuple(got.shape)}, expected one cell at the training size"
        )
    diff = float((ref - got.flatten(1)).abs().max())
    scale = max(1.0, float(ref.abs().max()))
    if not diff <= tolerance * scale:
        raise WorkFailed(
            f"conversion check failed: logits differ by {diff:.3g} (tolerance {tolerance * scale:.3g})",
            "nothing was written",
        )
    return diff


def _stride_by_probing(fcn: nn.Module, input_size) -> tuple:
    """Output stride read off the score map's size on a much larger input, on the meta device (nothing computed)."""
    twin = meta_twin(fcn)
    c, h, w = input_size
    grow = 4096
    with torch.no_grad():
        out = twin(torch.zeros(1, c, h + grow, w + grow, device="meta"))
    cells = out.shape[2:]
    return tuple(int(grow // (n - 1)) if n > 1 and grow % (n - 1) == 0 else grow / max(n - 1, 1) for n in cells)


def placement(facts: dict) -> tuple[tuple, tuple]:
    """(offset, window size) of output cell (0, 0) in input pixels: its receptive field, or, where every score
    reads the whole image (a global field), the classifier's training-size input at the top-left."""
    if isinstance(facts["receptive_field"], str):
        return tuple(facts["offset"] or (0, 0)), tuple(facts["training_size"][1:])
    return tuple(facts["offset"]), tuple(facts["receptive_field"])


def fcn_checkpoint(ckpt: Checkpoint, conversion: Conversion) -> Checkpoint:
    """A checkpoint for the converted model: same model spec and preprocessing, the FCN's weights, the facts."""
    return replace(
        ckpt.without_training(),
        fcn=conversion.as_dict(),
        state_dict={k: v.detach().cpu().contiguous() for k, v in conversion.model.state_dict().items()},
    )


# ------------------------------------------------------------------------------------------- score maps


def window_origin(conversion_facts: dict, i: int, j: int) -> tuple:
    """Top-left input pixel of the window that output cell (i, j) sees."""
    s, (o, _) = conversion_facts["stride"], placement(conversion_facts)
    return (o[0] + i * s[0], o[1] + j * s[1])


@torch.no_grad()
def score_map(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Class probabilities [classes, H', W'] of a fully-convolutional model on one preprocessed image [C, H, W]."""
    logits = model.eval()(image[None])
    return torch.softmax(logits[0].float(), dim=0)
