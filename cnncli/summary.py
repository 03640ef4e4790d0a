"""What a model is: torchinfo's layer tree with output shapes, params, MACs, receptive field and jump.

MACs are counted once, on leaf modules only (conv: out_h*out_w*C_out*k_h*k_w*C_in/groups, linear: in*out), the
way torchvision's model tables count them; containers show the sum of their leaves, never adding to totals.
"""

from __future__ import annotations

import math

import torch.nn as nn

from cnncli.models.files import ProgramModule
from cnncli.models.open import probe
from cnncli.receptive import module_fields


def leaf_macs(module: nn.Module, input_size: list, output_size: list) -> int:
    """Multiply-accumulates of one call of a leaf module, per sample."""
    if not output_size:
        return 0
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return math.prod(output_size[2:]) * module.out_channels * kh * kw * module.in_channels // module.groups
    if isinstance(module, nn.ConvTranspose2d):
        kh, kw = module.kernel_size
        return math.prod(input_size[2:]) * module.in_channels * kh * kw * module.out_channels // module.groups
    if isinstance(module, nn.Linear):
        return math.prod(output_size[1:-1]) * module.in_features * module.out_features
    return 0


def summarize(model: nn.Module, input_size: tuple[int, int, int], depth: int = 3, device: str = "cpu") -> dict:
    """Layer rows and totals for `cnn summary` (see CLI.md for the JSON keys)."""
    import torchinfo

    model = model.to(device).eval()
    out = probe(model, input_size, device)
    if is_opaque(model):
        return _opaque_summary(model, input_size, out)
    stats = torchinfo.summary(model, input_size=(1, *input_size), depth=max(depth, 1), verbose=0, device=device,
                              mode="eval", col_names=("output_size", "num_params"))
    infos = stats.summary_list
    names = {id(m): n for n, m in model.named_modules()}
    traced = module_fields(model, input_size)
    fields = traced[0] if traced else {}

    # MACs of every leaf call; a container row shows the sum of the leaf calls below it (never added to totals)
    quals = [names.get(id(info.module), info.var_name) or "" for info in infos]
    leaf = [leaf_macs(info.module, info.input_size, info.output_size) if info.is_leaf_layer else 0 for info in infos]
    total_macs = sum(leaf)

    def container_macs(qual: str) -> int:
        if qual == "":
            return total_macs
        return sum(m for q, m in zip(quals, leaf) if q == qual or q.startswith(qual + "."))

    rows = []
    for i, info in enumerate(infos):
        if info.depth > depth:
            continue
        qual = quals[i]
        has_shown_children = info.depth < depth and not info.is_leaf_layer
        f = fields.get(qual) if qual else (traced[1] if traced else None)
        params = sum(p.numel() for p in info.module.parameters())
        rows.append({
            "name": qual or info.class_name,
            "type": info.class_name,
            "depth": info.depth,
            "output": list(info.output_size[1:]) if info.output_size else [],
            "params": params,
            "macs": leaf[i] if info.is_leaf_layer else container_macs(qual),
            "container": has_shown_children,
            "receptive_field": list(f.receptive_field) if f else None,
            "jump": list(f.jump_value) if f else None,
        })
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out_field = traced[1] if traced else None
    return {
        "input": list(input_size),
        "output": list(out.shape[1:]),
        "params": total,
        "trainable_params": trainable,
        "macs": total_macs,
        "receptive_field": list(out_field.receptive_field) if out_field else None,
        "jump": list(out_field.jump_value) if out_field else None,
        "layers": rows,
    }



def is_opaque(model: nn.Module) -> bool:
    """TorchScript and torch.export modules: their layers run without Python hooks, so per-layer shapes, MACs and
    receptive fields cannot be measured (they are reported as unknown, never as 0)."""
    import torch

    return isinstance(model, (torch.jit.ScriptModule, ProgramModule))


def _opaque_summary(model: nn.Module, input_size, out) -> dict:
    root = model.program if isinstance(model, ProgramModule) else model
    rows = [{"name": name, "type": getattr(m, "original_name", type(m).__name__), "depth": 1, "output": None,
             "params": sum(p.numel() for p in m.parameters()), "macs": None, "container": False,
             "receptive_field": None, "jump": None} for name, m in root.named_children() if not name.startswith("_")]
    return {"input": list(input_size), "output": list(out.shape[1:]), "params": sum(p.numel() for p in model.parameters()),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad), "macs": None,
            "receptive_field": None, "jump": None, "layers": rows}


def onnx_summary(path: str) -> dict:
    """An ONNX file: its inputs, outputs and parameter count (the initializers' elements); nothing is run."""
    import onnx

    try:
        m = onnx.load(path, load_external_data=False)
    except Exception as e:
        from cnncli.errors import UsageError

        raise UsageError(f"unreadable ONNX file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None

    def desc(v):
        return {"name": v.name, "shape": [d.dim_param or d.dim_value or None for d in v.type.tensor_type.shape.dim]}

    inputs = [desc(i) for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    outputs = [desc(o) for o in m.graph.output]
    params = sum(math.prod(t.dims) for t in m.graph.initializer)
    opset = next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), None)
    return {"input": inputs[0]["shape"][1:] if inputs else [], "output": outputs[0]["shape"][1:] if outputs else [],
            "params": int(params), "trainable_params": None, "macs": None, "receptive_field": None, "jump": None,
            "layers": [], "inputs": inputs, "outputs": outputs, "opset": opset}
