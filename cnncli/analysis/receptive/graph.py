"""Trace a model with torch.fx, propagate shapes, and walk the graph once, giving every value an `Info` by the
registered rules; then read the fields back per module."""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
from torch.fx.passes.shape_prop import ShapeProp

from cnncli.analysis.arith import Field
from cnncli.analysis.receptive.layout import Info, is_tensor, join, relabel, shape_layout, shape_of, unknown
from cnncli.analysis.receptive.rules import Call, rule_for_function, rule_for_module


def trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Symbolically trace (in eval mode) and propagate shapes of `example` through the graph."""
    was_training = model.training
    model.eval()
    from cnncli.models._manipulate import shapes_only_normalization

    try:
        gm = torch.fx.symbolic_trace(model)  # outside the context: the graph keeps torch's own functions
        with torch.no_grad(), shapes_only_normalization():
            ShapeProp(gm).propagate(example)
    finally:
        model.train(was_training)
    return gm


class Walk:
    """One pass over a shape-propagated graph: each node's Info from its inputs' by the rule of its operation."""

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.infos: dict[torch.fx.Node, Info] = {}

    def run(self) -> dict[torch.fx.Node, Info]:
        first = True
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                shape = shape_of(node)
                image = first and shape is not None and len(shape) == 4
                info = Info(Field(), ("n", "c", "h", "w")) if image else Info(None, None)
                first = False
            elif node.op == "get_attr":
                info = Info(None, None)
            elif node.op == "output":
                info = self.info(node.args[0])
            else:
                info = self.call(node)
            self.infos[node] = info
        return self.infos

    def info(self, a) -> Info:
        if isinstance(a, torch.fx.Node):
            return self.infos.get(a, Info())
        if isinstance(a, (list, tuple)):
            parts = [self.info(x) for x in a]
            return Info(join(p.field for p in parts), parts[0].layout if parts else None)
        return Info()

    def call(self, node: torch.fx.Node) -> Info:
        if not is_tensor(node) and node.target is not operator.getitem:
            return Info(None, None)  # not a tensor (a size, a shape): carries no field
        module = self.modules[node.target] if node.op == "call_module" else None
        c = Call(node, self, module)
        try:
            if module is not None:
                info = rule_for_module(module)(c)
            elif all(v is None for v in c.fields):
                info = Info(None, shape_layout(c.out_shape))  # built from parameters and constants only
            else:
                info = rule_for_function(node.target)(c)
        except Exception:  # a rule that does not fit this call: measure rather than guess
            info = Info(unknown(join(c.fields)), None)
        return info if info.layout is None else Info(info.field, relabel(info.layout, shape_of(node)))


def node_infos(gm: torch.fx.GraphModule) -> dict[torch.fx.Node, Info]:
    """An Info for every node of a shape-propagated graph."""
    return Walk(gm).run()


@dataclass
class Fields:
    """The traced fields of a model: {qualified module name: field at its (last) output}, the model output's field,
    and the layout of each module's output (to measure the UNKNOWN ones)."""

    per_module: dict
    output: object
    layouts: dict
    calls: dict = field(default_factory=dict)  # {module name: [field at each call's output]}: a module run twice
    # (torchvision BasicBlock's one ReLU) has a field per call, as `cnn summary` has a row per call

    def of_call(self, name: str, k: int):
        """The field at the output of the k-th call (from 0) of module `name`; its last when not known per call."""
        calls = self.calls.get(name) or ()
        return calls[k] if k < len(calls) else self.per_module.get(name)


def model_fields(
    model: nn.Module, input_size: tuple[int, int, int], device: str | torch.device = "cpu"
) -> Fields | None:
    """Fields of every module of `model` on an input of `input_size` (None if the model cannot be traced)."""
    try:
        gm = trace(model, torch.zeros(1, *input_size, device=device))
    except Exception:
        return None
    per_module: dict = {}
    layouts: dict = {}
    calls: dict[str, list] = {}
    out = None
    for node, info in node_infos(gm).items():
        if node.op == "call_module":
            scope = node.target
        elif node.op in ("call_function", "call_method"):
            scope = _scope_of(node)
        else:
            scope = ""
        if node.op == "call_module" and shape_of(node) is not None:
            calls.setdefault(node.target, []).append(info.field)
        if scope and shape_of(node) is not None:
            parts = scope.split(".")
            for i in range(1, len(parts) + 1):  # a container's field is that of the last module it ran
                per_module[".".join(parts[:i])] = info.field
                layouts[".".join(parts[:i])] = info.layout
        if node.op == "output":
            out = info.field
    return Fields(per_module, out, layouts, calls)


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
