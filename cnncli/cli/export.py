"""`cnn export`: deployable artefacts, proven to match."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import JsonOpt, choice, emit_json, epilog, log, model_options, say

# the format table lives in cnncli.export (torch); its names are repeated here so --help starts without torch,
# and a test checks the two lists agree
FORMATS = ("onnx", "pt2")
EXPORTERS = ("auto", "dynamo", "torchscript", "export")

EPILOG = (
    "Examples:\n\n  cnn export runs/train/best.pt --onnx                 # runs/train/best.onnx, dynamic batch\n\n"
    "  cnn export runs/train/best-fcn.pt --onnx -o fcn.onnx  # dynamic batch, height and width\n\n"
    "  cnn export runs/train/best.pt --onnx --static-batch --opset 17 --json\n\n"
    "  cnn export runs/train/best.pt --format pt2             # runs/train/best.pt2, a torch.export program\n\n"
    "  cnn export model.pt --onnx                            # a state dict: architecture detected\n\n"
    "  cnn export resnet18 --onnx --in 3x224x224             # a registry name (random weights, or --weights)\n\n"
    "Formats: onnx (exporters: dynamo, then torchscript), pt2 (exporter: export). "
    "The check (default) runs the file against PyTorch on several batch sizes (and image sizes for "
    "fully-convolutional models), after onnx's full checker for ONNX; above --tolerance nothing is written "
    "and the exit code is 1."
)


@app.command("export", epilog=epilog(EPILOG))
@model_options()
def export_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A model file (checkpoint, state dict, TorchScript, "
            ".pt2; --trust-pickle for a pickled module) or a registry name.",
        ),
    ],
    fmt: Annotated[
        Optional[str], typer.Option("--format", "-f", click_type=choice("format", FORMATS), help="What to write.")
    ] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Same as --format onnx.")] = False,
    output: Annotated[
        Optional[str],
        typer.Option("-o", "--output", help="Output path (default: CHECKPOINT with the format's suffix)."),
    ] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 18,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch/--static-batch", help="Batch dimension dynamic (default) or fixed to 1.")
    ] = True,
    dynamic_size: Annotated[
        Optional[bool],
        typer.Option("--dynamic-size/--static-size", help="Dynamic H/W (default for fully-convolutional checkpoints)."),
    ] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Verify the file against PyTorch.")] = True,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Largest allowed max |file - PyTorch| on the logits.")
    ] = 1e-4,
    exporter: Annotated[
        str,
        typer.Option(
            "--exporter", click_type=choice("exporter", EXPORTERS), help="auto tries the format's exporters in order."
        ),
    ] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Export any model file or registry model to ONNX or a torch.export program with metadata, verified against PyTorch."""
    from cnncli.errors import UsageError

    if onnx and fmt not in (None, "onnx"):
        raise UsageError(f"--onnx and --format {fmt} disagree", "give one of them")
    fmt = "onnx" if onnx else fmt
    if fmt is None:
        raise UsageError("choose a format", "--format onnx (or --onnx), --format pt2")
    req = opts.check(checkpoint)
    from cnncli.export import export_model

    shapes = {"dynamic_batch": dynamic_batch, "dynamic_size": dynamic_size}
    verify = {"check": check, "tolerance": tolerance, "exporter": exporter}
    res = export_model(checkpoint, fmt, output, opset=opset, **shapes, **verify, force=force, log=log, request=req)
    if json_out:
        emit_json(res.as_dict())
        return
    shape = lambda d: "x".join(str(v) for v in d["shape"])  # noqa: E731
    opset_text = f"opset {res.opset}, " if res.opset is not None else ""
    say(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, {opset_text}{res.exporter} exporter)")
    say(
        f"  input  {res.inputs[0]['name']} {shape(res.inputs[0])}   output {res.outputs[0]['name']} {shape(res.outputs[0])}"
    )
    if res.max_abs_diff is not None:
        checker = "onnx.checker passed; ONNX Runtime" if fmt == "onnx" else "the file"
        say(
            f"  check: {checker} vs PyTorch max |diff| {res.max_abs_diff:.2e} over "
            f"{len(res.checked)} input shapes (tolerance {tolerance:g})"
        )
    else:
        say("  check skipped (--no-check)")
    if fmt == "onnx":
        log(f"next: cnn eval {res.path} --data {res.metadata.get('dataset') or 'DATASET'}")
