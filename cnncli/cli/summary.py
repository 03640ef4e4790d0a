"""`cnn summary`: layers, shapes, params, MACs and receptive field of a model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    Column,
    DeviceOpt,
    JsonOpt,
    dims,
    emit_json,
    epilog,
    human,
    log_device,
    log_notes,
    model_options,
    pick_device,
    render_table,
    say,
)


@app.command(
    "summary",
    epilog=epilog(
        "Examples:\n\n  cnn summary resnet18 --in 3x224x224\n\n  cnn summary lenet5 --in 1x32x32 "
        "--num-classes 10\n\n  cnn summary runs/train/best.pt\n\n  cnn summary model.pt          # a state dict: "
        "architecture detected\n\n  cnn summary my_net.py:Net --in 3x64x64\n\n  cnn summary model.onnx        # "
        "inputs, outputs, parameters\n\n  cnn summary resnet50 --batch 32   # what a training step keeps for backward"
    ),
)
@model_options(skip=("mean", "std", "classes"))
def summary_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="Registry name, family, file.py:Class, or a model file: checkpoint, state "
            "dict, TorchScript, .pt2, .onnx."
        ),
    ],
    num_classes: Annotated[
        Optional[int], typer.Option("--num-classes", help="Classes of the output layer.", min=1)
    ] = None,
    depth: Annotated[int, typer.Option("--depth", help="How deep to show nested modules.")] = 3,
    batch: Annotated[
        int,
        typer.Option(
            "--batch",
            help="Batch size for the memory figures (a training step keeps what autograd saves, per batch).",
            min=1,
        ),
    ] = 1,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Layer table with output shapes, params, MACs, receptive field and jump; totals and memory.

    Receptive fields are exact (the conv arithmetic), `global` (an operation that mixes every position: global
    pooling, squeeze-and-excitation, attention), or measured from the input gradient where the arithmetic stops
    (marked *). MACs count every multiply-add, attention's included; each row shows what no row below it shows.
    """
    from dataclasses import replace

    from cnncli.cli._common import check_file

    req = opts.request(num_classes=num_classes)
    req = replace(req, on_meta=True)  # fresh weights are never looked at: built only if a field must be measured
    from cnncli.fileio import is_onnx_file

    if is_onnx_file(model):
        from cnncli.analysis.summary import onnx_summary

        result = replace(onnx_summary(check_file(model, "model")), model=model).as_json()
        emit_json(result) if json_out else _render(result)
        return
    from cnncli.analysis.summary import summarize
    from cnncli.models.open import open_model

    dev = pick_device(device)
    opened = open_model(model, req)
    c, h, w = opened.input_size
    size = req.input_size
    if size is not None:
        c, h, w = size[0] or c, size[1], size[2]
    from cnncli.models.open import build_model

    real = (lambda: build_model(opened.spec)) if opened.origin == "registry" and not opts.weights else None
    summary = summarize(opened.model, (c, h, w), depth=depth, device=str(dev), batch=batch, real=real)
    result = replace(summary, model=opened.name).as_json()
    log_notes(opened)
    if not json_out:
        log_device(device, dev)
    if json_out:
        emit_json(result)
        return
    _render(result)


def _pair(v, kind=None) -> str:
    if v is None:
        return "?" if kind is None and v is None else "-"
    if v == "global":
        return "global"
    a, b = (_num(x) for x in v)
    text = a if a == b else f"{a}x{b}"
    if kind == "at least":
        return "≥" + text + "*"
    return text + ("*" if kind == "measured" else "")


def _num(x) -> str:
    return "?" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _jump(v) -> str:
    return "-" if v is None else _pair(v)


def _both(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n:,}" + (f" ({human(n)})" if n >= 1000 else "")


def _count(n) -> str:
    return "?" if n is None else f"{n:,}"


def _bytes(n: int | None) -> str:
    if n is None:
        return "unknown"
    return f"{n / 2**20:,.2f} MiB" if n >= 2**17 else f"{n / 2**10:,.1f} KiB"


COLUMNS = [
    Column("layer"),
    Column("type"),
    Column("output", right=True),
    Column("params", right=True),
    Column("MACs", right=True),
    Column("RF", right=True),
    Column("jump", right=True),
]


def _row(r: dict) -> list[str]:
    return [
        "  " * r["depth"] + r["name"],
        r["type"],
        "?" if r["output"] is None else dims(r["output"]),
        "--" if r["container"] else _count(r["params"]),
        "--" if r["container"] and not r["macs"] else _count(r["macs"]),
        _pair(r["receptive_field"], r.get("receptive_field_kind")),
        _jump(r["jump"]),
    ]


def _render_onnx(res: dict) -> None:
    """An ONNX graph: inputs, outputs, parameters; no layer table."""
    lines = [f"{res['model']}: ONNX opset {res['opset']}, {res['precision']}"]
    lines += [f"{io[:-1]} {v['name']}: {dims(v['shape'])}" for io in ("inputs", "outputs") for v in res[io]]
    q = res.get("quantization") or {}
    if q:
        io = f"; input and output {q['io']}" if "io" in q else ""
        lines.append(
            f"{res['precision']}: weights {q.get('weights', '?')}; activations {q.get('activations', '?')}{io} "
            f"({q.get('method', '?')})"
        )
    if "calibration_images" in q:
        lines.append(
            f"  calibrated ({q.get('calibration', '?')}) on {q['calibration_images']:,} {q.get('calibration_data', '')} training images"
        )
    if "accuracy_fp32" in q and f"accuracy_{res['precision']}" in q:
        lines.append(
            f"  top-1 when exported: {q['accuracy_' + res['precision']]:.2%} (fp32 {q['accuracy_fp32']:.2%}) on {q.get('evaluated_on', '?')}"
        )
    lines += [
        f"params {_both(res['params'])} (initializers, after any folding at export"
        + ("; scales and zero points not counted)" if res["precision"] == "int8" else ")"),
        "MACs and receptive field: unknown for an ONNX graph (give the PyTorch model)",
    ]
    say("\n".join(lines))


def _render(res: dict) -> None:
    if "inputs" in res:
        _render_onnx(res)
        return
    title = f"{res['model']}  input {dims(res['input'])} -> output {dims(res['output'])}"
    render_table(COLUMNS, [_row(r) for r in res["layers"]], title=title, notes=_notes(res))


def _notes(res: dict) -> list[str]:
    """The lines under the table: totals, memory, and what the marks in it mean."""
    foot = (
        f"total params {_both(res['params'])}"
        + (f", trainable {res['trainable_params']:,}" if res.get("trainable_params") is not None else "")
        + f"; MACs {_both(res['macs'])}; receptive field "
        + _pair(res["receptive_field"], res.get("receptive_field_kind"))
        + ("" if res["jump"] is None or res["receptive_field"] == "global" else f", jump {_jump(res['jump'])}")
    )
    notes = [foot]
    mem = res.get("memory")
    if mem:
        kept = (
            f"a training step keeps {_bytes(mem['saved_for_backward'])} for backward (what autograd saves)"
            if mem["saved_for_backward"] is not None
            else f"what a training step keeps for backward is unknown: {mem.get('saved_for_backward_unknown')}"
        )
        notes.append(
            f"memory at batch {mem['batch']}: params {_bytes(mem['params'])}, input {_bytes(mem['input'])}, "
            f"forward/backward {_bytes(mem['forward_backward'])} (torchinfo's estimate), {kept}"
        )
    kinds = {r.get("receptive_field_kind") for r in res["layers"]}
    if kinds & {"measured", "at least"}:
        notes.append(
            "RF* measured: the extent of the input gradient of the layer's centre unit (the arithmetic does "
            "not cover an operation there); ≥ where it reached the image border"
            + (
                f"; measured on a float64 copy with {res['opened_scales']} zero-initialised scale tensor(s) set to 1 "
                "(at zero they close residual branches: the gradient would see the shortcut alone)"
                if res.get("opened_scales")
                else ""
            )
        )
    if res["macs"] is not None and any(r["container"] and r["macs"] for r in res["layers"]):
        notes.append(
            "a container's MACs are those of its own operations (e.g. attention's matrix products), not "
            "of the rows below it"
        )
    if any(r["macs"] is None for r in res["layers"]):
        counted = "" if res["macs"] is None else "; the total MACs are counted from the operations a forward pass ran"
        notes.append(
            "per-layer shapes, MACs and receptive fields are unknown for this file: its layers run without "
            f"Python hooks (give the state dict or checkpoint for the full table){counted}"
        )
    return notes
