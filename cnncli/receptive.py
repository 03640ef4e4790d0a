"""Receptive field, jump and offset of every layer of a torch model, traced with torch.fx.

Each FX node carries a `cnncli.arith.Field`; sliding windows (conv, pooling) advance it with the same arithmetic
as `cnn shape`, element-wise merges (residual adds, concatenation) take the union of their inputs, and a Linear
after a flatten covers the whole flattened map (it is a convolution with a kernel the size of that map).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from cnncli.arith import Field


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@dataclass
class _State:
    field: Field
    flat_map: tuple[int, int] | None = None  # HxW removed by a flatten, for the next Linear


def _shape(node) -> tuple | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Symbolically trace and propagate shapes of `example` through the graph."""
    gm = torch.fx.symbolic_trace(model)
    was_training = gm.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
    gm.train(was_training)
    return gm


def node_fields(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, Field]:
    """A Field for every node of a shape-propagated graph."""
    modules = dict(gm.named_modules())
    states: dict[torch.fx.Node, _State] = {}

    def inputs(node):
        return [states[a] for a in node.all_input_nodes if a in states]

    for node in gm.graph.nodes:
        ins = inputs(node)
        base = ins[0] if ins else _State(Field())
        st = _State(base.field, base.flat_map)
        in_shape = _shape(node.all_input_nodes[0]) if node.all_input_nodes else None
        if node.op == "call_module":
            m = modules[node.target]
            st = _module_state(m, base, in_shape, _shape(node))
        elif node.op in ("call_function", "call_method"):
            st = _function_state(node, base, ins, in_shape, _shape(node))
        states[node] = st
    return {n: s.field for n, s in states.items()}


def _global(base: _State, in_shape) -> _State:
    if in_shape is not None and len(in_shape) == 4:
        return _State(base.field.through(tuple(in_shape[2:])))
    return base


def _module_state(m: nn.Module, base: _State, in_shape, out_shape) -> _State:
    f = base.field
    if isinstance(m, nn.Conv2d):
        pad = (0, 0) if isinstance(m.padding, str) and m.padding == "valid" else m.padding
        if isinstance(pad, str):  # 'same'
            pad = tuple(d * (k - 1) // 2 for d, k in zip(m.dilation, m.kernel_size))
        return _State(f.through(m.kernel_size, m.stride, pad, m.dilation))
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size)
        d = _pair(getattr(m, "dilation", 1))
        return _State(f.through(k, s, _pair(m.padding), d))
    if isinstance(m, nn.ConvTranspose2d):
        return _State(f.through_transpose(m.kernel_size, m.stride, m.padding, m.dilation))
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive(base, in_shape, out_shape)
    if isinstance(m, nn.Flatten):
        return _flatten(base, in_shape, m.start_dim)
    if isinstance(m, nn.Linear):
        return _linear(base)
    return _State(f, base.flat_map)


def _adaptive(base: _State, in_shape, out_shape) -> _State:
    if in_shape is None or out_shape is None or len(in_shape) != 4:
        return base
    (ih, iw), (oh, ow) = in_shape[2:], out_shape[2:]
    if (oh, ow) == (1, 1):
        return _global(base, in_shape)
    if ih % oh == 0 and iw % ow == 0:
        k = (ih // oh, iw // ow)
        return _State(base.field.through(k, k))
    return base  # a non-dividing adaptive pool has no single window size: leave the field as it is


def _flatten(base: _State, in_shape, start_dim: int) -> _State:
    if in_shape is not None and len(in_shape) == 4 and start_dim == 1:
        return _State(base.field, tuple(in_shape[2:]))
    return base


def _linear(base: _State) -> _State:
    if base.flat_map is not None:
        return _State(base.field.through(base.flat_map))
    return _State(base.field)


def _function_state(node, base: _State, ins: list[_State], in_shape, out_shape) -> _State:
    t = node.target
    if t in (torch.flatten,) or t in ("flatten", "view", "reshape"):
        start = node.args[1] if t is torch.flatten and len(node.args) > 1 else node.kwargs.get("start_dim", 1)
        if t in ("view", "reshape") and out_shape is not None and len(out_shape) != 2:
            return base
        return _flatten(base, in_shape, start if isinstance(start, int) else 1)
    if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return _adaptive(base, in_shape, out_shape)
    if t in ("mean", torch.mean) and out_shape is not None and in_shape is not None and len(out_shape) < 4:
        return _global(base, in_shape)
    if t is F.linear:
        return _linear(base)
    if t in (F.max_pool2d, F.avg_pool2d):
        k = _pair(node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"])
        s = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride")
        s = k if s is None else _pair(s)
        p = _pair(node.args[3] if len(node.args) > 3 else node.kwargs.get("padding", 0))
        return _State(base.field.through(k, s, p))
    if len(ins) > 1:
        f = ins[0].field
        for other in ins[1:]:
            f = f.union(other.field)
        return _State(f, base.flat_map)
    return base


def module_fields(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[dict[str, Field], Field] | None:
    """{qualified module name: field at its (last) output} and the field of the model output; None if untraceable."""
    try:
        gm = trace(model, torch.zeros(1, *input_size))
    except Exception:
        return None
    fields = node_fields(gm)
    per_module: dict[str, Field] = {}
    out_field = Field()
    for node, f in fields.items():
        if node.op == "call_module":
            parts = node.target.split(".")
            for i in range(1, len(parts) + 1):  # a container's field is that of the last module it ran
                per_module[".".join(parts[:i])] = f
        elif node.op in ("call_function", "call_method"):
            scope = _scope_of(node)
            if scope:
                parts = scope.split(".")
                for i in range(1, len(parts) + 1):
                    per_module[".".join(parts[:i])] = f
        if node.op == "output":
            out_field = f
    return per_module, out_field


def _scope_of(node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)
    return ""
