"""What a model is: torchinfo's layer tree with output shapes, params, multiply-adds, receptive field, jump, memory.

- Multiply-adds are counted by PyTorch's `torch.utils.flop_counter` on every aten operation that does them
  (convolutions, linears, attention's matrix products, einsum, functional calls), with autograd enabled so that
  `nn.MultiheadAttention` takes the path it counts; MACs = FLOPs / 2, as torchvision's `_ops` tables. Each row shows
  the operations of that module not listed in a row below it, so rows sum to the total.
- Receptive fields come from `cnncli.analysis.receptive` (exact arithmetic, or global); the layers it cannot compute are
  measured from the input gradient and labelled so.
- Memory: parameters, buffers, the input, torchinfo's forward/backward estimate, and what autograd saves for the
  backward pass of a training step at `batch` (counted with `torch.autograd.graph.saved_tensors_hooks`).

Shapes, counts and memory are computed on the meta device (no arithmetic is done, so large inputs and batches cost
nothing); only measured fields run the real model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cnncli.analysis.arith import Field
from cnncli.analysis.receptive import GLOBAL, UNKNOWN, measure_fields, model_fields
from cnncli.errors import UsageError
from cnncli.models._manipulate import meta_twin
from cnncli.models.files import ProgramModule
from cnncli.models.open import probe


def module_macs(model: nn.Module, input_size, device, batch: int = 1) -> tuple[dict[str, int], int]:
    """({qualified module name: multiply-adds of its calls, children included}, total) per image, counted on a
    batch of `batch` (a torch.export program takes its own batch size only).

    Each operation is counted once, for the innermost module that was running when it ran (`_ByModule`); a module's
    figure is then the sum over itself and every module below it by name. So the figures add up by the module tree
    even where a model runs its children out of order: `for block in self.stages: x = block(x)` (the container
    `stages` is never called itself) or `block.forward(x)` (no hooks: its operations are its caller's)."""
    from cnncli.models._manipulate import shapes_only_normalization

    x = torch.zeros(batch, *input_size, device=device)
    with _ByModule(model) as fc, shapes_only_normalization():
        model(x)  # autograd on: nn.MultiheadAttention's fused inference kernel is not counted
    per: dict[str, int] = {}
    for name, flops in fc.own.items():
        parts = name.split(".") if name else []
        for i in range(len(parts) + 1):  # the module and each of its ancestors by name, the root ("") included
            key = ".".join(parts[:i])
            per[key] = per.get(key, 0) + flops
    per = {k: v // 2 // batch for k, v in per.items()}
    return per, fc.get_total_flops() // 2 // batch


class _ByModule(FlopCounterMode):
    """torch's FlopCounterMode that also adds each operation's flops to the innermost running module."""

    def __init__(self, model: nn.Module):
        super().__init__(display=False)
        self.names = {id(m): n for n, m in model.named_modules()}
        self.stack: list[str] = []
        self.own: dict[str, int] = {}

    def __enter__(self):
        from torch.nn.modules import module as M

        def pre(mod, args):
            self.stack.append(self.names.get(id(mod), self.stack[-1] if self.stack else ""))

        def post(mod, args, out):
            if self.stack:
                self.stack.pop()

        self.hooks = (M.register_module_forward_pre_hook(pre), M.register_module_forward_hook(post))
        return super().__enter__()

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        return super().__exit__(*exc)

    def _count_flops(self, func_packet, out, args, kwargs):
        if func_packet in self.flop_registry:
            flops = self.flop_registry[func_packet](*args, **kwargs, out_val=out)
            where = self.stack[-1] if self.stack else ""
            self.own[where] = self.own.get(where, 0) + flops
        return super()._count_flops(func_packet, out, args, kwargs)


def saved_for_backward(model: nn.Module, input_size, batch: int, device, fake: bool = True) -> int:
    """Bytes autograd keeps for the backward pass of one training-mode forward at `batch` on `device` (each storage
    once; parameters and buffers excluded: they exist anyway). With `fake`, the step runs on fake tensors (no
    memory, no arithmetic) placed on `device`, so the kernels that device would pick (e.g. its attention backend)
    decide what is saved; otherwise on real ones (for models whose code reads values), the model's buffers left as
    they were."""
    import contextlib

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.multiprocessing.reductions import StorageWeakRef

    def key(t):
        return StorageWeakRef(t.untyped_storage()).cdata

    dev = torch.device(device)
    saved: dict[int, int] = {}
    was = model.training
    model.train()
    try:
        with FakeTensorMode(allow_non_fake_inputs=False) if fake else contextlib.nullcontext():
            if fake:
                tensors = {
                    n: torch.empty(p.shape, dtype=p.dtype, device=dev, requires_grad=p.requires_grad)
                    for n, p in model.named_parameters()
                }
            else:
                tensors = dict(model.named_parameters())
            tensors.update(
                {
                    n: torch.zeros(b.shape, dtype=b.dtype, device=dev) if fake else b.clone()
                    for n, b in model.named_buffers()
                }
            )
            own = {key(t) for t in tensors.values()}

            def pack(t):
                k = key(t)
                if k not in own:
                    saved[k] = t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                torch.func.functional_call(model, tensors, (torch.zeros(batch, *input_size, device=dev),))
    finally:
        model.train(was)
    return sum(saved.values())


@dataclass(kw_only=True)
class LayerRow:
    """One row of the layer table: a `layers` entry of `cnn summary --json`."""

    name: str
    type: str
    depth: int
    output: list | None  # None: not measurable (TorchScript, programs)
    params: int
    macs: int | None  # what no row below it shows
    macs_total: int | None  # the module's own and its children's
    container: bool
    receptive_field: object  # [h, w], "global" or None (unknown)
    jump: object
    receptive_field_kind: str | None  # exact | global | measured | at least | None


@dataclass(kw_only=True)
class Summary:
    """What `cnn summary` reports, key for key its `--json` object (`as_json`); `inputs`, `outputs` and `opset`
    only for an ONNX file."""

    model: str = ""
    input: list
    output: list | None
    params: int | None
    trainable_params: int | None = None
    macs: int | None = None
    receptive_field: object = None
    jump: object = None
    receptive_field_kind: str | None = None
    memory: dict | None = None
    layers: list[LayerRow] = field(default_factory=list)
    inputs: list | None = None
    outputs: list | None = None
    opset: int | None = None
    opened_scales: int | None = None  # measured fields: zero-initialised scales set to 1 on the measuring copy
    precision: str | None = None  # an ONNX file's: fp32, fp16, int8 (from its graph)
    quantization: dict | None = None  # what cnn export recorded of an int8 or fp16 file

    def as_json(self) -> dict:
        d = asdict(self)
        if self.inputs is None:  # a PyTorch model: no graph inputs to list
            for key in ("inputs", "outputs", "opset", "precision", "quantization"):
                del d[key]
        if not self.opened_scales:
            del d["opened_scales"]
        return d


def summarize(
    model: nn.Module,
    input_size: tuple[int, int, int],
    depth: int = 3,
    device: str = "cpu",
    batch: int = 1,
    measure: bool = True,
    real=None,
) -> Summary:
    """Layer rows and totals for `cnn summary` (see CLI.md for the JSON keys). `model` may live on the meta device;
    `real()` then builds the model with weights, if a field must be measured."""
    model = model.eval()
    if is_opaque(model):
        out = probe(model, input_size, device)
        return replace(_opaque_summary(model, input_size, out), macs=_counted_macs(model, input_size, device))
    twin = meta_twin(model)
    if twin is not None:
        try:
            return _summarize(twin, "meta", model, input_size, depth, device, batch, measure, real)
        except Exception:  # code that reads values (data-dependent control flow) cannot run on meta tensors; a
            pass  # model that fails on this input fails again below, with the reason
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    subject = real() if on_meta and real else model
    return _summarize(subject.to(device), device, subject, input_size, depth, device, batch, measure, None)


def _summarize(work: nn.Module, dev, model: nn.Module, input_size, depth, device, batch, measure, real) -> Summary:
    """summarize() on `work`, a copy of `model` on the meta device or `model` itself on `dev`."""
    stats = _torchinfo(work, input_size, depth, dev)
    out_shape = _output_shape(stats)
    infos = stats.summary_list
    names = {id(m): n for n, m in work.named_modules()}
    quals = [names.get(id(info.module), info.var_name) or "" for info in infos]
    inclusive, total_macs = module_macs(work, input_size, dev)
    traced = model_fields(work, input_size, dev)
    shown = [i for i, info in enumerate(infos) if info.depth <= depth]

    own = _own_macs(shown, quals, inclusive)
    fields = dict(traced.per_module) if traced else {}
    if traced is not None:
        unknown = [quals[i] for i in shown if quals[i] and fields.get(quals[i]) is UNKNOWN]
    else:  # not traceable at all: every row is measured (the first two levels: a backward pass each)
        unknown = [quals[i] for i in shown if infos[i].depth <= 2]
    measured = _measure(model, real, unknown, input_size, device, traced) if unknown and measure else {}

    rows, seen, grids = [], {}, {}
    for i, info in enumerate(infos):  # the k-th row of a module is its k-th call: its field is that call's
        qual = quals[i]
        k = seen[qual] = seen.get(qual, -1) + 1
        f = (traced.of_call(qual, k) if traced else None) if qual else (traced.output if traced else None)
        token_jump = _token_jump(f, info.output_size, traced, qual, grids)
        if i not in shown:
            continue
        values = _field_values(f, measured.get(qual), input_size, info.output_size, traced, qual)
        if values[1] is None and values[2] is not None and token_jump:
            values = (values[0], token_jump, values[2])
        rows.append(_row(info, qual, depth, own[i], inclusive.get(qual, 0) if qual else total_macs, values))
    rf, jump, kind = _field_values(traced.output if traced else None, measured.get(""), input_size, None, traced, "")
    return Summary(
        input=list(input_size),
        output=out_shape,
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        macs=total_macs,
        receptive_field=rf,
        jump=jump,
        receptive_field_kind=kind,
        memory=_memory(work, input_size, batch, device, infos),
        layers=rows,
        opened_scales=max((m.get("opened_scales", 0) for m in measured.values()), default=0) or None,
    )


def _torchinfo(work: nn.Module, input_size, depth: int, dev):
    """torchinfo's layer list (output sizes, params); a model that fails on this input says why (`probe`)."""
    import torchinfo

    try:
        return torchinfo.summary(
            work,
            input_size=(1, *input_size),
            depth=max(depth, 1),
            verbose=0,
            device=dev,
            mode="eval",
            col_names=("output_size", "num_params"),
        )
    except Exception:
        if dev != "meta":
            probe(work, input_size, dev)
        raise


def _row(info, qual: str, depth: int, macs, macs_total, values) -> LayerRow:
    """One row of the layer table (the JSON `layers` entries)."""
    rf, jump, kind = values
    return LayerRow(
        name=qual or info.class_name,
        type=info.class_name,
        depth=info.depth,
        output=list(info.output_size[1:]) if info.output_size else [],
        params=sum(p.numel() for p in info.module.parameters()),
        macs=macs,
        macs_total=macs_total,
        container=info.depth < depth and not info.is_leaf_layer,
        receptive_field=rf,
        jump=jump,
        receptive_field_kind=kind,
    )


def _own_macs(shown: list[int], quals: list[str], inclusive: dict) -> dict[int, int]:
    """A row's MACs: its module's, less those of the rows shown below it (so that rows add up to the total)."""
    seen: set[str] = set()
    own: dict[int, int] = {}
    for i in shown:
        q = quals[i]
        if q in seen:
            own[i] = 0  # a module called again: its calls are counted on its first row
            continue
        seen.add(q)
        children = {quals[j] for j in shown if quals[j] != q and _parent(quals[j]) == q}
        own[i] = inclusive.get(q, 0) - sum(inclusive.get(c, 0) for c in children)
    return own


def _measure(model: nn.Module, real, names: list[str], input_size, device, traced) -> dict:
    """Measured fields of the named modules, on the model with weights (built by `real()` if `model` is on meta)."""
    on_meta = any(p.device.type == "meta" for p in model.parameters())
    subject = real() if on_meta and real else None if on_meta else model
    if subject is None:
        return {}
    return measure_fields(
        subject.to(device),
        input_size,
        sorted(set(names)),
        traced.layouts if traced else {},
        dtype=torch.float32,
        copy_model=subject is model,
    )


def _output_shape(stats) -> list:
    root = stats.summary_list[0] if stats.summary_list else None
    if root is None or not root.output_size:
        raise UsageError("the model does not return a tensor", "forward() must return the logits")
    return list(root.output_size[1:])


def _parent(qual: str) -> str:
    return qual.rsplit(".", 1)[0] if "." in qual else ""


def _field_values(f, measured: dict | None, input_size, output_size, traced, qual) -> tuple:
    """(receptive_field, jump, kind) of one row: kind is "exact", "global", "measured", "at least" (measured, and
    the gradient reached the image border: the field may be larger), or None (unknown)."""
    if isinstance(f, Field):
        return list(f.receptive_field), list(f.jump_value), "exact"
    if f is GLOBAL:  # the units still step by the stride of their map
        lay = traced.layouts.get(qual) if traced else None
        hw = _map_size(output_size, lay) if output_size and len(output_size) >= 3 else None
        jump = [_ratio(input_size[1], hw[0]), _ratio(input_size[2], hw[1])] if hw and hw != (1, 1) else None
        return "global", jump, "global"
    if measured:
        jump = measured.get("jump") or [None, None]
        if output_size and len(output_size) >= 3 and None in jump:
            lay = traced.layouts.get(qual) if traced else None
            hw = _map_size(output_size, lay)
            if hw:
                jump = [j if j is not None else _ratio(input_size[1 + a], hw[a]) for a, j in enumerate(jump)]
        if None in jump:
            jump = None  # a vector of class scores has no stride
        kind = "at least" if any(measured["clipped"]) else "measured"
        return measured["receptive_field"], jump, kind
    return None, None, None


def _token_jump(f, output_size, traced, qual: str, grids: dict) -> list | None:
    """A global or measured row of tokens steps by the stride of the grid its tokens came from: the exact rows upstream with
    as many tokens or map positions (less a class and a distillation token ahead of them) say which; None when no
    such row ran (a grid made by attention itself, as LeViT's later stages: the jump stays unknown rather than
    guessed). Exact rows are recorded in `grids` as the walk passes them (shown or not)."""
    lay = traced.layouts.get(qual) if traced and qual else None
    if not lay or not output_size or len(lay) != len(output_size):
        return None
    if isinstance(f, Field) and "h" in lay and "w" in lay:  # a map, flattened into tokens further on (LeViT)
        grids.setdefault(output_size[lay.index("h")] * output_size[lay.index("w")], list(f.jump_value))
    if "s" not in lay:
        return None
    n = output_size[lay.index("s")]
    if isinstance(f, Field):
        grids.setdefault(n, list(f.jump_value))
        return None
    return next((grids[n - extra] for extra in (0, 1, 2) if n - extra in grids), None)


def _map_size(output_size, layout) -> tuple[int, int] | None:
    if layout and "h" in layout and "w" in layout:
        return output_size[layout.index("h")], output_size[layout.index("w")]
    if len(output_size) == 4:
        return tuple(output_size[2:])
    return None


def _ratio(a: int, b: int):
    from fractions import Fraction

    r = Fraction(a, b)
    return int(r) if r.denominator == 1 else float(r)


def _memory(work: nn.Module, input_size, batch: int, target, infos) -> dict:
    """Bytes: parameters, buffers, one input batch, torchinfo's forward/backward estimate (twice the outputs of the
    layers with parameters), and what autograd saves for backward in a training step at `batch`."""

    def size(ts):
        return sum(t.numel() * t.element_size() for t in ts)

    elem = next((p.element_size() for p in work.parameters()), 4)
    fwd = 2 * batch * sum(info.output_bytes for info in infos if info.is_leaf_layer and info.num_params > 0)
    why = None
    try:
        saved = saved_for_backward(work, input_size, batch, target)
    except Exception as e:
        saved, why = None, _why_no_step(e, batch)  # a training step that cannot run here: unknown, not 0
        if not any(p.device.type == "meta" for p in work.parameters()):
            try:  # code that reads values cannot run on fake tensors: count a real step
                saved = saved_for_backward(work, input_size, batch, target, fake=False)
            except Exception as e:
                why = _why_no_step(e, batch)
    out = {
        "batch": batch,
        "params": size(work.parameters()),
        "buffers": size(work.buffers()),
        "input": batch * math.prod(input_size) * elem,
        "forward_backward": fwd,
        "saved_for_backward": saved,
    }
    if saved is None:
        out["saved_for_backward_unknown"] = why  # why it is unknown, in words
    return out


def _why_no_step(e: Exception, batch: int) -> str:
    """Why a training-mode forward failed, for the line that says the figure is unknown."""
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if "more than 1 value per channel" in msg:
        return (
            f"a training step cannot run at batch {batch}: a BatchNorm layer sees one value per channel "
            "(a 1x1 feature map at this input size); give --batch 2 or a larger --in"
        )
    return f"a training step cannot run on this input: {type(e).__name__}: {msg[:160]}"


def is_opaque(model: nn.Module) -> bool:
    """TorchScript and torch.export modules: their layers run without Python hooks, so per-layer shapes, MACs and
    receptive fields cannot be measured (they are reported as unknown, never as 0)."""
    import torch

    return isinstance(model, (torch.jit.ScriptModule, ProgramModule))


def _counted_macs(model: nn.Module, input_size, device) -> int | None:
    """Total multiply-adds of one image, counted from the operations a real forward pass dispatches (TorchScript
    and torch.export programs run aten operations the counter sees, though no per-layer hooks); None if it fails."""
    try:
        return module_macs(model, input_size, device, getattr(model, "static_batch", None) or 1)[1]
    except Exception:
        return None


def _opaque_summary(model: nn.Module, input_size, out) -> Summary:
    root = model.program if isinstance(model, ProgramModule) else model
    rows = [
        LayerRow(
            name=name,
            type=getattr(m, "original_name", type(m).__name__),
            depth=1,
            output=None,
            params=sum(p.numel() for p in m.parameters()),
            macs=None,
            macs_total=None,
            container=False,
            receptive_field=None,
            jump=None,
            receptive_field_kind=None,
        )
        for name, m in root.named_children()
        if not name.startswith("_")
    ]
    return Summary(
        input=list(input_size),
        output=list(out.shape[1:]),
        params=sum(p.numel() for p in model.parameters()),
        trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        layers=rows,
    )


def onnx_summary(path: str) -> Summary:
    """An ONNX file: its inputs, outputs and parameter count (the initializers' elements); nothing is run."""
    from cnncli.engine.runtime import read_onnx

    m = read_onnx(path)

    def desc(v):
        return {"name": v.name, "shape": [d.dim_param or d.dim_value or None for d in v.type.tensor_type.shape.dim]}

    inputs = [desc(i) for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
    outputs = [desc(o) for o in m.graph.output]
    # a quantized graph's scales and zero points are not parameters: the inputs 1 and 2 of its (De)QuantizeLinear
    qparams = {n for node in m.graph.node if node.op_type in _QDQ for n in node.input[1:3]}
    weights = [t for t in m.graph.initializer if t.name not in qparams]
    params = sum(math.prod(t.dims) for t in weights)
    opset = next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), None)
    import json

    recorded = {p.key: p.value for p in m.metadata_props}
    try:
        quantization = json.loads(recorded["quantization"]) if "quantization" in recorded else None
    except ValueError:
        quantization = None
    return Summary(
        input=inputs[0]["shape"][1:] if inputs else [],
        output=outputs[0]["shape"][1:] if outputs else [],
        params=int(params),
        inputs=inputs,
        outputs=outputs,
        opset=opset,
        precision=_onnx_precision(m, weights),
        quantization=quantization if isinstance(quantization, dict) else None,
    )


_QDQ = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLinear")


def _onnx_precision(m, weights) -> str:
    """What an ONNX graph computes in, read from the graph itself (not from metadata a file could get wrong): int8
    where it quantizes (QDQ or QLinear operators), else the element type holding most of its parameters."""
    if any(node.op_type in _QDQ for node in m.graph.node):
        return "int8"
    names = {1: "fp32", 10: "fp16", 16: "bf16", 11: "fp64"}
    count: dict[str, int] = {}
    for t in weights:
        key = names.get(t.data_type, "other")
        count[key] = count.get(key, 0) + math.prod(t.dims)
    return max(count, key=count.get) if count else "fp32"
