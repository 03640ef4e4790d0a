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
    ModelFileOpt,
    dims,
    emit_json,
    epilog,
    human,
    log_device,
    parse_input_size,
    pick_device,
    render_table,
)


@app.command("summary", epilog=epilog("Examples:\n\n  cnn summary resnet18 --in 3x224x224\n\n  cnn summary lenet5 --in 1x32x32 "
             "--num-classes 10\n\n  cnn summary runs/train/best.pt\n\n  cnn summary my_net.py:Net --in 3x64x64"))
def summary_cmd(
    model: Annotated[str, typer.Argument(help="Registry name, family, path/to/file.py:Class or a checkpoint .pt.")],
    input_size: Annotated[Optional[str], typer.Option("--in", help="Input CxHxW (default: the model's own).")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the output layer.")] = None,
    depth: Annotated[int, typer.Option("--depth", help="How deep to show nested modules.")] = 3,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Load a state dict from this file.")] = None,
    model_file: ModelFileOpt = None,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
) -> None:
    """Layer table with output shapes, params, MACs, receptive field and jump; totals."""
    from cnncli.models.open import open_model
    from cnncli.summary import summarize

    size = parse_input_size(input_size)
    dev = pick_device(device)
    opened = open_model(model, input_size=size, num_classes=num_classes, weights=weights, model=model_file)
    c, h, w = opened.input_size
    if size is not None:
        c, h, w = size[0] or c, size[1], size[2]
    result = {"model": opened.name, **summarize(opened.model, (c, h, w), depth=depth, device=str(dev))}
    if not json_out:
        log_device(device, dev)
    if json_out:
        emit_json(result)
        return
    _render(result)


def _pair(v) -> str:
    if v is None:
        return "-"
    a, b = v
    return str(a) if a == b else f"{a}x{b}"


def _both(n: int) -> str:
    return f"{n:,}" + (f" ({human(n)})" if n >= 1000 else "")


def _render(res: dict) -> None:
    columns = [Column("layer"), Column("type"), Column("output", right=True), Column("params", right=True),
               Column("MACs", right=True), Column("RF", right=True), Column("jump", right=True)]
    rows = [["  " * r["depth"] + r["name"], r["type"], dims(r["output"]),
             "--" if r["container"] else f"{r['params']:,}", "--" if r["container"] else f"{r['macs']:,}",
             _pair(r["receptive_field"]), _pair(r["jump"])] for r in res["layers"]]
    foot = (f"total params {_both(res['params'])}, trainable {res['trainable_params']:,}; "
            f"MACs {_both(res['macs'])}; receptive field {_pair(res['receptive_field'])}, jump {_pair(res['jump'])}")
    render_table(columns, rows, title=f"{res['model']}  input {dims(res['input'])} -> output {dims(res['output'])}",
                 notes=[foot])
