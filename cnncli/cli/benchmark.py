"""`cnn benchmark`: which form of the model to deploy (latency, throughput, size and accuracy per format)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    Column,
    DeviceOpt,
    JsonOpt,
    emit_json,
    epilog,
    log,
    log_device,
    model_options,
    pick_device,
    render_table,
)

# the engine's list (cnncli.engine.benchmark.FORMATS) repeated so --help starts without torch; a test checks both
FORMATS = ("torch", "torch-bf16", "torch-compile", "onnx", "onnx-int8", "onnx-fp16", "openvino", "onnx-cuda")

EPILOG = (
    "Examples:\n\n  cnn benchmark runs/train/best.pt --data digits        # every format, batch 1 and 32\n\n"
    "  cnn benchmark runs/train/best.pt --data digits --formats onnx,onnx-int8 --batch-sizes 1,8\n\n"
    "  cnn benchmark resnet18 --in 3x224x224 --formats torch,onnx   # random weights: speed only\n\n"
    "  cnn benchmark model.onnx --batch-sizes 1 --json      # an ONNX file as it is\n\n"
    "Formats: torch (eager, BatchNorm folded, channels_last), torch-bf16 (autocast, where the device has bf16), "
    "torch-compile (torch.compile; the first calls compile), onnx (fp32, verified against PyTorch), onnx-int8 "
    "(calibrated on --data's training images), onnx-fp16, openvino (pip install 'cnncli[openvino]'), onnx-cuda "
    "(onnxruntime-gpu). A format that cannot be made here is a row with the reason. Each row: warm-up, then at "
    "least 10 calls and --seconds of them; p50/p95 of the per-call times, images/s from their mean. Accuracy is "
    "cnn eval's on the same split."
)


@app.command("benchmark", epilog=epilog(EPILOG))
@model_options()
def benchmark_cmd(
    model: Annotated[
        str, typer.Argument(help="A model file (checkpoint, state dict, TorchScript, .pt2, .onnx) or a registry name.")
    ],
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset: accuracy per format, and onnx-int8's calibration images.")
    ] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Where datasets live.")] = None,
    formats: Annotated[
        Optional[str],
        typer.Option("--formats", help="Comma-separated, from: " + ",".join(FORMATS) + " (default: all)."),
    ] = None,
    batch_sizes: Annotated[str, typer.Option("--batch-sizes", help="Comma-separated batch sizes.")] = "1,32",
    seconds: Annotated[
        float, typer.Option("--seconds", help="Timed seconds per row, over three passes (at least 12 calls).", min=0.0)
    ] = 1.0,
    calib_images: Annotated[
        int, typer.Option("--calib-images", help="Training images that calibrate onnx-int8.", min=1)
    ] = 256,
    threads: Annotated[
        Optional[int],
        typer.Option("--threads", help="CPU threads for every runtime (default: CNN_THREADS, else the free cores)."),
    ] = None,
    keep: Annotated[
        Optional[str],
        typer.Option("--keep", help="Keep the files made (model.onnx, model-int8.onnx...) in this folder."),
    ] = None,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Latency p50/p95, throughput, file size and accuracy of a model in each deployable format."""
    req = opts.check(model)
    chosen, sizes = _checked(formats, batch_sizes, seconds, threads, keep)
    dev = pick_device(device)
    ds = None
    if data:
        from cnncli.data import load_dataset

        ds = load_dataset(data, data_dir)
    from cnncli.engine import threads as T
    from cnncli.export.quantize import Calibration

    plan = T.plan(threads)
    T.apply(plan)
    log_device(device, dev)
    log(f"threads: {plan.describe()} (every runtime)")
    cal = Calibration(ds, calib_images, 1.0) if ds is not None else None
    run = {"device": dev, "request": req, "threads": plan.intra, "data": ds, "calibration": cal, "seconds": seconds}
    rows = _run(model, chosen, sizes, keep, run)
    if json_out:
        emit_json({"model": model, "data": data, "threads": plan.intra, "rows": [r.as_json() for r in rows]})
        return
    _render(rows, model, data)


def _run(model: str, formats, sizes, keep, kwargs) -> list:
    """The benchmark, its files made in --keep (kept) or in a temporary folder (removed)."""
    import contextlib
    import os
    import tempfile

    from cnncli.engine.benchmark import run_benchmark

    with contextlib.ExitStack() as stack:
        if keep:
            from cnncli.fileio import os_error

            try:
                os.makedirs(keep, exist_ok=True)
            except OSError as e:
                raise os_error(e, keep) from None
        workdir = keep or stack.enter_context(tempfile.TemporaryDirectory(prefix="cnn-benchmark-"))
        return run_benchmark(model, formats, sizes, workdir=workdir, log=log, **kwargs)


def _checked(formats, batch_sizes, seconds, threads, keep) -> tuple[list[str], list[int]]:
    """The options that need no model: exit 2 before anything is opened or made."""
    import math
    import os

    from cnncli.config import parse_threads
    from cnncli.engine.benchmark import parse_batch_sizes, parse_formats
    from cnncli.errors import UsageError
    from cnncli.fileio import check_output_folder

    if not math.isfinite(seconds):
        raise UsageError(f"--seconds must be a number, got {seconds}")
    parse_threads(threads)
    chosen, sizes = parse_formats(formats), parse_batch_sizes(batch_sizes)
    if keep:
        check_output_folder(keep, "--keep folder")
        if os.path.isdir(keep) and os.listdir(keep):  # the files made there are not allowed to replace anything
            raise UsageError(f"--keep folder {keep} is not empty", "give a new or empty folder")
    return chosen, sizes


def _render(rows, model: str, data: str | None) -> None:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    columns = [
        Column("format"),
        Column("batch", right=True),
        Column("p50 ms", right=True),
        Column("p95 ms", right=True),
        Column("images/s", right=True),
        Column("size MB", right=True),
        Column("accuracy", right=True),
        Column("runtime / reason"),
    ]
    body = [
        [
            r.format,
            str(r.batch_size),
            num(r.latency_ms_p50, ".2f"),
            num(r.latency_ms_p95, ".2f"),
            num(r.images_per_second, ",.0f"),
            "-" if r.size_bytes is None else f"{r.size_bytes / 1e6:.2f}",
            "-" if r.accuracy is None else f"{r.accuracy:.2%}",
            r.error or r.runtime,
        ]
        for r in rows
    ]
    title = f"{model}" + (f" (accuracy on {data})" if data else " (no --data: speed only)")
    render_table(columns, body, title=title)
