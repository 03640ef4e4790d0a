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
    "  cnn export runs/train/best.pt --onnx --int8 --data digits   # best-int8.onnx: ~4x smaller, scored on test\n\n"
    "  cnn export runs/train/best.pt --onnx --fp16           # best-fp16.onnx: half the size, for GPUs\n\n"
    "Formats: onnx (exporters: dynamo, then torchscript), pt2 (exporter: export). "
    "The check (default) runs the file against PyTorch on several batch sizes (and image sizes for "
    "fully-convolutional models), after onnx's full checker for ONNX; above --tolerance nothing is written "
    "and the exit code is 1. --int8 and --fp16 start from that checked fp32 graph; the smaller file is scored "
    "against it on the dataset's held-out images and refused (exit 1, nothing written) when top-1 drops by more "
    "than --max-drop."
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
        Optional[float],
        typer.Option(
            "--tolerance",
            help="Largest allowed max |file - PyTorch| on the logits, times the largest |logit| when that is above "
            "1 (default 1e-4; with --fp16 0.01).",
        ),
    ] = None,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="An int8 ONNX file (static quantization, calibrated on --data), gated by accuracy."
        ),
    ] = False,
    fp16: Annotated[bool, typer.Option("--fp16", help="A float16 ONNX file (float32 input and output).")] = False,
    data: Annotated[
        Optional[str],
        typer.Option(
            "--data", help="Dataset: --int8 calibrates on its training images; the file is scored on its held-out ones."
        ),
    ] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Where datasets live.")] = None,
    calib_images: Annotated[
        int, typer.Option("--calib-images", help="Training images that calibrate --int8's ranges.")
    ] = 256,
    max_drop: Annotated[
        float,
        typer.Option("--max-drop", help="--int8/--fp16: refuse the file when top-1 drops by more (0.01 = one point)."),
    ] = 0.01,
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
    precision = _precision(int8, fp16, data, data_dir)
    req = opts.check(checkpoint)
    from cnncli.export import export_model

    cal = _calibration(precision, fmt, data, data_dir, calib_images, max_drop)
    shapes = {"dynamic_batch": dynamic_batch, "dynamic_size": dynamic_size}
    fp32_tolerance = 1e-4 if tolerance is None or precision == "fp16" else tolerance
    verify = {"check": check, "tolerance": fp32_tolerance, "exporter": exporter}
    small = {"precision": precision, "calibration": cal, "fp16_tolerance": tolerance if precision == "fp16" else None}
    res = export_model(
        checkpoint, fmt, output, opset=opset, **shapes, **verify, **small, force=force, log=log, request=req
    )
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
        graph = " (the fp32 graph)" if precision != "fp32" else ""
        say(
            f"  check: {checker}{graph} vs PyTorch max |diff| {res.max_abs_diff:.2e} over "
            f"{len(res.checked)} input shapes (allowed {res.allowed:.2g}: {fp32_tolerance:g} x max(1, the largest "
            f"|logit| {res.output_scale:.3g}))"
        )
        _say_smaller(res)
    else:
        say(
            "  check skipped (--no-check)"
            + (f": the {precision} file's accuracy is unknown" if precision != "fp32" else "")
        )
    if fmt == "onnx":
        log(f"next: cnn eval {res.path} --data {res.metadata.get('dataset') or 'DATASET'}")


def _precision(int8: bool, fp16: bool, data, data_dir) -> str:
    from cnncli.errors import UsageError

    if int8 and fp16:
        raise UsageError("--int8 and --fp16 disagree", "give one of them")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if precision == "fp32" and (data or data_dir):
        raise UsageError("--data is for --int8 and --fp16", "cnn export MODEL --onnx --int8 --data DATASET")
    return precision


def _calibration(precision: str, fmt: str, data, data_dir, calib_images: int, max_drop: float):
    """The dataset --int8 calibrates on and both gates score on (None without --data), once the options fit."""
    from cnncli.export.quantize import Calibration, check_options

    check_options(precision, fmt, data or "", calib_images, max_drop)
    if not data:
        return None
    from cnncli.data import load_dataset

    return Calibration(load_dataset(data, data_dir), calib_images, max_drop)


def _say_smaller(res) -> None:
    """What an int8 or fp16 file was measured to keep."""
    f = res.figures
    if "max_rel_diff" in f:
        say(f"  fp16 logits vs PyTorch: max |diff| {f['max_rel_diff']:.2e} of the largest |logit|")
    if "accuracy_fp32" in f:
        got = f[f"accuracy_{res.precision}"]
        say(
            f"  top-1 on {f['evaluated_on']}: fp32 {f['accuracy_fp32']:.2%}, {res.precision} {got:.2%} "
            f"(drop {(f['accuracy_fp32'] - got) * 100:.2f} points, --max-drop {f['max_drop']:g})"
        )
    elif res.precision == "fp16":
        say("  accuracy not measured (give --data DATASET to score the fp16 file on held-out images)")
    if "calibration_images" in f:
        say(f"  calibrated on {f['calibration_images']:,} training images")
