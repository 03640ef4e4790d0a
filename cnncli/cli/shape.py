"""`cnn shape`: convolution and pooling arithmetic, instant, no torch."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import Column, JsonOpt, choice, dims, emit_json, epilog, human, render_table, say

OPS = ("conv", "maxpool", "avgpool", "convT")

EPILOG = (
    "Examples:\n\n"
    "  cnn shape --in 3x32x32 --k 5 --s 1 --p 2 --out-channels 10\n\n"
    "  cnn shape --in 64x56x56 --k 3 --s 2 --p 1 --op maxpool\n\n"
    "  cnn shape --in 16x8x8 --k 4 --s 2 --p 1 --op convT --out-channels 8\n\n"
    '  cnn shape --in 3x32x32 --layers "conv(6,k=5) relu maxpool(2) conv(16,k=5) maxpool(2) flatten fc(120) fc(84) fc(10)"\n\n'
    "Layers: conv(out,k,s,p,d,g) dwconv(k,s,p) convT(out,k,s,p,op) maxpool(k,s,p) avgpool(k,s,p) gap bn "
    "relu|gelu|sigmoid|tanh|... dropout flatten fc(out); keywords k= s= p= d= g= op= ceil=true bias=false."
)


@app.command("shape", epilog=epilog(EPILOG))
def shape_cmd(
    input_size: Annotated[
        str, typer.Option("--in", help="Input size CxHxW, e.g. 3x32x32 (channels count for params and MACs).")
    ] = "3x32x32",
    k: Annotated[str, typer.Option("--k", help="Kernel size, N or HxW.")] = "3",
    s: Annotated[
        Optional[str], typer.Option("--s", help="Stride, N or HxW (pooling default: the kernel size).")
    ] = None,
    p: Annotated[str, typer.Option("--p", help="Padding: N, HxW, 'same' or 'valid'.")] = "0",
    d: Annotated[str, typer.Option("--d", help="Dilation, N or HxW.")] = "1",
    out_channels: Annotated[
        Optional[int], typer.Option("--out-channels", help="Output channels (conv/convT); enables params and MACs.")
    ] = None,
    groups: Annotated[int, typer.Option("--groups", help="Groups (= input channels for depthwise).")] = 1,
    op: Annotated[str, typer.Option("--op", click_type=choice("--op", OPS), help="Layer kind.")] = "conv",
    output_padding: Annotated[str, typer.Option("--output-padding", help="convT output padding, N or HxW.")] = "0",
    ceil_mode: Annotated[bool, typer.Option("--ceil-mode", help="Pooling: round the output size up.")] = False,
    no_bias: Annotated[bool, typer.Option("--no-bias", help="The layer has no bias term.")] = False,
    layers: Annotated[
        Optional[str],
        typer.Option("--layers", help='A whole stack, e.g. "conv(6,k=5) relu maxpool(2) flatten fc(10)".'),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Output size, formula, parameters, MACs and receptive field of conv/pool layers (no torch needed)."""
    from cnncli.analysis import arith
    from cnncli.errors import UsageError

    shape = arith.parse_size(input_size)
    if shape[0] is None:
        raise UsageError(f"malformed size {input_size!r} for --in", "give channels too: CxHxW, e.g. 3x32x32")
    if layers is not None:
        rows = arith.run_layers(shape, layers)
        tot = arith.totals(rows)
        if json_out:
            emit_json(
                {"input": list(shape), "output": list(rows[-1].output), **tot, "layers": [r.as_dict() for r in rows]}
            )
            return
        _print_layers(shape, rows, tot)
        return

    conv = {
        "out_channels": out_channels,
        "kernel": k,
        "stride": s or 1,
        "padding": p,
        "dilation": d,
        "groups": groups,
        "bias": not no_bias,
    }
    if op == "conv":
        layer = arith.conv2d(shape, **conv)
    elif op == "convT":
        layer = arith.conv_transpose2d(shape, output_padding=output_padding, **conv)
    else:
        layer = arith.pool2d(shape, kind=op[:3], kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode)
    _print_layer(op, shape, layer, json_out)


def _print_layer(op: str, shape, layer, json_out: bool) -> None:
    if json_out:
        emit_json(
            {
                "op": op,
                "input": list(shape),
                "output": list(layer.output),
                "params": layer.params,
                "macs": layer.macs,
                "receptive_field": list(layer.receptive_field),
                "jump": list(layer.jump),
                "formulas": layer.formulas,
            }
        )
        return
    rf, jump = layer.field.describe()
    lines = [f"{op}  {dims(shape)} -> {dims(layer.output)}", *(f"  {f}" for f in layer.formulas)]
    if layer.params is None and op in ("conv", "convT"):
        lines.append("  params/MACs: give --out-channels")
    lines.append(f"  receptive field {rf}, jump {jump}")
    say("\n".join(lines))


def _print_layers(shape, rows, tot) -> None:
    columns = [
        Column("#", right=True),
        Column("layer", footer="total"),
        Column("output", right=True, footer=dims(rows[-1].output)),
        Column("params", right=True, footer=f"{tot['params']:,}"),
        Column("MACs", right=True, footer=f"{tot['macs']:,}"),
        Column("RF", right=True),
        Column("jump", right=True),
    ]
    table = []
    for i, r in enumerate(rows, 1):
        rf, jump = r.field.describe()
        table.append([str(i), r.name, dims(r.output), f"{r.params or 0:,}", f"{r.macs or 0:,}", rf, jump])
    render_table(
        columns,
        table,
        title=f"input {dims(shape)}",
        notes=[f"params {human(tot['params'])}, MACs {human(tot['macs'])}"],
    )
