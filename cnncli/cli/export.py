"""`cnn export`: deployable artefacts, proven to match."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import JsonOpt, emit_json, log

EPILOG = ("Examples:\n\n  cnn export runs/train/best.pt --onnx                 # runs/train/best.onnx, dynamic batch\n\n"
          "  cnn export runs/train/best-fcn.pt --onnx -o fcn.onnx  # dynamic batch, height and width\n\n"
          "  cnn export runs/train/best.pt --onnx --static-batch --opset 17 --json\n\n"
          "The check (default) runs onnx's full checker, then ONNX Runtime against PyTorch on several batch sizes "
          "(and image sizes for fully-convolutional models); above --tolerance nothing is written and the exit code is 1.")


@app.command("export", epilog=EPILOG)
def export_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A checkpoint .pt from cnn train or cnn fcn.")],
    onnx: Annotated[bool, typer.Option("--onnx", help="Export to ONNX (the format supported today).")] = False,
    output: Annotated[Optional[str], typer.Option("-o", "--output", help="Output path (default: CHECKPOINT.onnx).")] = None,
    opset: Annotated[int, typer.Option("--opset", help="ONNX opset version.")] = 18,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch/--static-batch", help="Batch dimension dynamic (default) or fixed to 1.")] = True,
    dynamic_size: Annotated[Optional[bool], typer.Option("--dynamic-size/--static-size", help="Dynamic H/W (default for fully-convolutional checkpoints).")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Verify with onnx.checker and ONNX Runtime vs PyTorch.")] = True,
    tolerance: Annotated[float, typer.Option("--tolerance", help="Largest allowed max |ONNX - PyTorch| on the logits.")] = 1e-4,
    exporter: Annotated[str, typer.Option("--exporter", help="auto (dynamo, falling back to TorchScript) | dynamo | torchscript.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Export a checkpoint to ONNX with metadata, verified against PyTorch."""
    from cnncli.cli._common import check_file
    from cnncli.errors import UsageError

    if not onnx:
        raise UsageError("choose a format", "--onnx")
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise UsageError(f"unknown exporter {exporter!r}", "use auto, dynamo or torchscript")
    check_file(checkpoint, "checkpoint")
    from cnncli.export import export_onnx

    res = export_onnx(checkpoint, output, opset=opset, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size,
                      check=check, tolerance=tolerance, force=force, exporter=exporter, log=log)
    if json_out:
        emit_json(res.as_dict())
        return
    shape = lambda d: "x".join(str(v) for v in d["shape"])  # noqa: E731
    print(f"wrote {res.path} ({res.size_bytes / 1e6:.2f} MB, opset {res.opset}, {res.exporter} exporter)")
    print(f"  input  {res.inputs[0]['name']} {shape(res.inputs[0])}   output {res.outputs[0]['name']} {shape(res.outputs[0])}")
    if res.max_abs_diff is not None:
        print(f"  check: onnx.checker passed; ONNX Runtime vs PyTorch max |diff| {res.max_abs_diff:.2e} over "
              f"{len(res.checked)} input shapes (tolerance {tolerance:g})")
    else:
        print("  check skipped (--no-check)")
    log(f"next: cnn eval {res.path} --data {res.metadata.get('dataset') or 'DATASET'}")
