"""`cnn summary`: layers, shapes, params, MACs and receptive field of a model."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DeviceOpt,
    JsonOpt,
    console,
    emit_json,
    human,
    parse_input_size,
    plain_mode,
)


@app.command("summary", epilog="Examples:\n\n  cnn summary resnet18 --in 3x224x224\n\n  cnn summary lenet5 --in 1x32x32 "
             "--num-classes 10\n\n  cnn summary runs/train/best.pt\n\n  cnn summary my_net.py:Net --in 3x64x64")
def summary_cmd(
    model: Annotated[str, typer.Argument(help="Registry name, family, path/to/file.py:Class or a checkpoint .pt.")],
    input_size: Annotated[Optional[str], typer.Option("--in", help="Input CxHxW (default: the model's own).")] = None,
    num_classes: Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the output layer.")] = None,
    depth: Annotated[int, typer.Option("--depth", help="How deep to show nested modules.")] = 3,
    weights: Annotated[Optional[str], typer.Option("--weights", help="Load a state dict from this file.")] = None,
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Layer table with output shapes, params, MACs, receptive field and jump; totals."""
    from cnncli.engine.checkpoint import open_model
    from cnncli.engine.device import pick_device
    from cnncli.summary import summarize

    size = parse_input_size(input_size)
    loaded = open_model(model, input_size=size, num_classes=num_classes, weights=weights)
    c, h, w = loaded.input_size
    if size is not None:
        c, h, w = size[0] or c, size[1], size[2]
    dev = pick_device(device, quiet=json_out)
    result = summarize(loaded.model, (c, h, w), depth=depth, device=str(dev))
    result = {"model": loaded.name, **result}
    if json_out:
        emit_json(result)
        return
    _render(result)


def _dims(shape) -> str:
    return "x".join(str(v) for v in shape) if shape else "-"


def _rf(r) -> str:
    if r.get("receptive_field") is None:
        return "-"
    a, b = r["receptive_field"]
    return str(a) if a == b else f"{a}x{b}"


def _jump(r) -> str:
    if r.get("jump") is None:
        return "-"
    a, b = r["jump"]
    return str(a) if a == b else f"{a}x{b}"


def _render(res: dict) -> None:
    head = f"{res['model']}  input {_dims(res['input'])} -> output {_dims(res['output'])}"
    def both(n: int) -> str:
        return f"{n:,}" + (f" ({human(n)})" if n >= 1000 else "")

    foot = (f"total params {both(res['params'])}, trainable {res['trainable_params']:,}; "
            f"MACs {both(res['macs'])}; receptive field {_rf(res)}, jump {_jump(res)}")
    if plain_mode():
        w = max([len("  " * (r["depth"]) + r["name"]) for r in res["layers"]] + [20]) + 2
        lines = [head, f"{'layer':<{w}} {'type':<22} {'output':>14} {'params':>13} {'MACs':>15} {'RF':>7} {'jump':>5}"]
        for r in res["layers"]:
            p = "--" if r["container"] else f"{r['params']:,}"
            m = "--" if r["container"] else f"{r['macs']:,}"
            name = "  " * r["depth"] + r["name"]
            lines.append(f"{name:<{w}} {r['type']:<22} {_dims(r['output']):>14} {p:>13} {m:>15} {_rf(r):>7} {_jump(r):>5}")
        lines.append(foot)
        print("\n".join(lines))
        return
    from rich.table import Table

    t = Table(title=head)
    for col, just in (("layer", "left"), ("type", "left"), ("output", "right"), ("params", "right"),
                      ("MACs", "right"), ("RF", "right"), ("jump", "right")):
        t.add_column(col, justify=just)
    for r in res["layers"]:
        p = "--" if r["container"] else f"{r['params']:,}"
        m = "--" if r["container"] else f"{r['macs']:,}"
        t.add_row("  " * r["depth"] + r["name"], r["type"], _dims(r["output"]), p, m, _rf(r), _jump(r))
    out = console()
    out.print(t)
    out.print(foot)
