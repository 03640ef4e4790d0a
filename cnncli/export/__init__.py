"""Export formats as a table, and one path for all of them: open, prepare, write a temp file, verify, rename.

`export_formats()` lists what `cnn export --format NAME` can write (Ultralytics' `export_formats()` idea); each
format is one module here (`onnx_format`, `pt2_format`) with one or more writers tried in order and a check that
runs the written file against PyTorch on several input shapes (`base.max_diff`). The file appears under its name
only once a writer's output passed the check; otherwise nothing is left behind. Preprocessing facts go into the
file, so a consumer can prepare inputs without cnncli. A new format is a module with its writers, check and
describe, and one row in `export_formats()`.
"""

from __future__ import annotations

import errno
import math
import os

import torch

from cnncli import __version__
from cnncli.errors import CnnError, UsageError, WorkFailed, raise_if_interrupted
from cnncli.export.base import (  # noqa: F401
    ExportFormat,
    ExportJob,
    ExportResult,
    allowed_diff,
    check_shapes,
    max_diff,
)
from cnncli.export.onnx_format import (
    onnx_check,
    onnx_describe,
    onnx_dynamo,
    onnx_opset,
    onnx_torchscript,
    read_onnx_metadata,  # noqa: F401  (part of the package's API)
)
from cnncli.export.pt2_format import pt2_check, pt2_describe, pt2_export
from cnncli.fileio import atomic_write, check_output, os_error, remove_stale_temp_files, write_error
from cnncli.models._manipulate import fold_batchnorm
from cnncli.models.open import default_output


def export_formats() -> dict[str, ExportFormat]:
    """Every format `cnn export` writes, by `--format` name."""
    return {
        "onnx": ExportFormat(
            "onnx",
            ".onnx",
            "ONNX for ONNX Runtime, TensorRT, OpenVINO...",
            {"dynamo": onnx_dynamo, "torchscript": onnx_torchscript},
            onnx_check,
            onnx_describe,
            flag="--onnx",
        ),
        "pt2": ExportFormat(
            "pt2",
            ".pt2",
            "torch.export program for torch.export.load, AOTInductor, ExecuTorch",
            {"export": pt2_export},
            pt2_check,
            pt2_describe,
        ),
    }


def _prepare(
    model_arg: str, fmt: ExportFormat, *, opset, dynamic_batch, dynamic_size, request=None, log=lambda msg: None
) -> ExportJob:
    """Open the model (any form `open_model` takes), fold BatchNorm, and gather the metadata and the shapes to check."""
    from cnncli.models.open import open_model

    opened = open_model(model_arg, request)
    for note in opened.notes:
        log(note)
    if opened.origin == "registry" and not (request and request.weights):
        log(f"{model_arg}: random weights (give --weights FILE to export trained ones)")
    fcn = opened.checkpoint.fcn if opened.checkpoint else None
    dynamic_size = bool(fcn) if dynamic_size is None else dynamic_size
    if dynamic_size and not fcn:
        raise UsageError("--dynamic-size needs a fully-convolutional checkpoint", f"run: cnn fcn {model_arg}")
    static = getattr(opened.model, "static_batch", None)
    if static and dynamic_batch:  # a torch.export program fixed to one batch size: so is what it becomes
        log(f"{model_arg} was exported for batch {static} only: the {fmt.name} file takes batch {static}")
        dynamic_batch = False
    size = opened.input_size
    model = opened.model.eval()
    pre = opened.preprocess or _bare_preprocess(opened)
    meta = {
        "model_name": opened.name,
        **pre.to_metadata(),
        "channel_order": "L" if size[0] == 1 else "RGB",
        "layout": "NCHW, float32, pixels/255 then (x-mean)/std",
        "dataset": opened.dataset,
        "cnncli_version": __version__,
        "torch_version": str(torch.__version__),
        "fully_convolutional": bool(fcn),
        "format": fmt.name,
        "dynamic_batch": dynamic_batch,
        "dynamic_size": dynamic_size,
        "source": opened.source,
        "assumed": [n for n in opened.notes if n.startswith("assumed")],
    }
    if fcn:
        meta.update({"stride": fcn["stride"], "receptive_field": fcn["receptive_field"], "offset": fcn["offset"]})
    # batch 2 for a dynamic batch (exporters specialize a size-1 dimension); a static batch is 1, what the file takes
    batch = static or (2 if dynamic_batch else 1)
    example = torch.randn(batch, *size, generator=torch.Generator().manual_seed(1))
    shapes = check_shapes(size, dynamic_batch, dynamic_size, tuple(fcn["stride"]) if fcn else (1, 1))
    if static:
        shapes = [(static, *s[1:]) for s in shapes]
    return ExportJob(model, fold_batchnorm(model), example, shapes, meta, opset, dynamic_batch, dynamic_size, pre)


def _bare_preprocess(opened):
    """A registry architecture with nothing known about its data: its own defaults (logged by the caller)."""
    from cnncli.models.open import ModelRequest, resolve_preprocess

    pre, _ = resolve_preprocess(opened.spec, ModelRequest(), {})
    return pre


def _write_verified(
    job: ExportJob, fmt: ExportFormat, writer: str, out: str, check: bool, tolerance: float, finish=None
):
    """Write with one writer to a temp file, check it, rename it onto `out`. Returns the diff (None unchecked) or
    raises _Rejected with the reason; a rejected file never appears. `finish(tmp)`, when given, turns the checked
    fp32 file into the smaller one in place (int8, fp16) and returns its figures (result["figures"])."""
    result = {}

    def write(tmp: str) -> None:
        try:
            fmt.writers[writer](job, tmp)
        except CnnError:
            raise
        except Exception as e:
            raise_if_interrupted()  # Ctrl-C inside an exporter comes back as its ImportError or RuntimeError
            err = write_error(e)  # a full disk is not the exporter's fault: no other exporter will do better
            if err is not None and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES):
                raise os_error(err, out) from None
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise _Rejected(f"{writer} exporter failed: {type(e).__name__}: {msg}") from None
        try:
            result["diff"], result["scale"] = fmt.check(tmp, job) if check else (None, None)
        except Exception as e:  # the file does not run on one of the checked shapes (e.g. a shape guard)
            raise_if_interrupted()
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise _Rejected(f"{writer} file fails the check: {type(e).__name__}: {msg}") from None
        if check and math.isnan(result["diff"]):
            raise WorkFailed("the model's outputs are NaN or infinite on the check inputs", "no file was written")
        limit = allowed_diff(tolerance, result["scale"]) if check else None
        if check and not result["diff"] <= limit:
            raise _Rejected(
                f"{writer} graph differs from PyTorch by {result['diff']:.3g} (> {limit:.3g}: {tolerance:g} x "
                f"max(1, the largest |logit| {result['scale']:.3g}))"
            )
        if finish is not None:
            result["figures"] = finish(tmp)

    atomic_write(out, write, suffix=".tmp" + fmt.suffix)  # some writers check the extension
    return result["diff"], result.get("figures", {}), result["scale"]


class _Rejected(Exception):
    pass


def _format_and_writers(fmt: str, exporter: str, opset: int, tolerance: float) -> tuple[ExportFormat, list[str]]:
    """The format's table entry and the writers to try, once the options are known to be usable."""
    formats = export_formats()
    if fmt not in formats:
        raise UsageError(f"unknown format {fmt!r}", "use " + ", ".join(formats))
    spec = formats[fmt]
    writers = list(spec.writers) if exporter == "auto" else [exporter]
    if any(w not in spec.writers for w in writers):
        raise UsageError(f"format {fmt} has no exporter {exporter!r}", "use auto or " + ", ".join(spec.writers))
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise UsageError(f"--tolerance must be a number >= 0, got {tolerance}")
    if fmt == "onnx" and not 7 <= opset <= 23:
        raise UsageError(f"unsupported opset {opset}", "use 7..23 (default 18)")
    return spec, writers


def export_model(
    model_arg: str,
    fmt: str = "onnx",
    output: str | None = None,
    *,
    opset: int = 18,
    dynamic_batch: bool = True,
    dynamic_size: bool | None = None,
    check: bool = True,
    tolerance: float = 1e-4,
    force: bool = False,
    exporter: str = "auto",
    log=lambda msg: None,
    request=None,
    precision: str = "fp32",
    calibration=None,
    fp16_tolerance: float | None = None,
) -> ExportResult:
    """Export a model file to `fmt`, verified against PyTorch, written atomically. `precision` int8 or fp16 (ONNX):
    the verified fp32 graph made smaller (export/quantize.py), checked by accuracy on `calibration`'s dataset
    (int8 always, fp16 when a dataset is given) and fp16 also by its logits within `fp16_tolerance` of their scale."""
    from cnncli.export.quantize import check_options

    check_options(precision, fmt, calibration and calibration.data, *_calibration_numbers(calibration))
    spec, writers = _format_and_writers(fmt, exporter, opset, tolerance)
    suffix = spec.suffix if precision == "fp32" else f"-{precision}{spec.suffix}"
    out = check_output(output or default_output(model_arg, suffix), [model_arg], force)
    job = _prepare(
        model_arg, spec, opset=opset, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, request=request, log=log
    )
    finish = _finisher(job, precision, calibration, check, fp16_tolerance, log)
    from cnncli.engine.runtime import check_finite_weights

    check_finite_weights(job.model, model_arg)
    if isinstance(job.model, torch.jit.ScriptModule) and exporter == "auto":  # torch.export cannot trace TorchScript
        writers = [w for w in writers if w != "dynamo"] or writers
    remove_stale_temp_files(os.path.dirname(os.path.abspath(out)), out)  # of an export that was killed
    failures = []
    for i, writer in enumerate(writers):
        try:
            diff, figures, scale = _write_verified(job, spec, writer, out, check, tolerance, finish)
        except _Rejected as e:
            failures.append(str(e))
            if i + 1 < len(writers):  # the last failure is the error message itself
                log(f"{failures[-1]}; trying the {writers[i + 1]} exporter")
            continue
        result = _result(job, spec, out, writer, diff, precision, figures)
        if scale is not None:
            result.output_scale, result.allowed = scale, allowed_diff(tolerance, scale)
        return result
    hint = "no file was written"
    if job.dynamic_size:
        hint += "; --static-size exports the model for the training size only"
    raise WorkFailed("; ".join(failures), hint)


def _result(job: ExportJob, spec: ExportFormat, out: str, writer: str, diff, precision: str, figures) -> ExportResult:
    inputs, outputs = spec.describe(out)
    return ExportResult(
        out,
        spec.name,
        onnx_opset(out) if spec.name == "onnx" else None,
        writer,
        diff,
        inputs,
        outputs,
        os.path.getsize(out),
        [list(s) for s in job.shapes],
        read_onnx_metadata(out, required=()) if precision != "fp32" else {**job.metadata, "exporter": writer},
        precision,
        figures,
    )


def _finisher(job, precision: str, calibration, check: bool, fp16_tolerance, log):
    """What turns the checked fp32 file into the int8 or fp16 one (None for fp32); --no-check: unmeasured."""
    if precision == "fp32":
        return None
    from cnncli.export.quantize import smaller_file

    return smaller_file(job, precision, calibration, fp16_tolerance, log, check=check)


def _calibration_numbers(cal) -> tuple[int, float]:
    return (cal.images, cal.max_drop) if cal is not None else (1, 0.0)


def export_onnx(model_arg: str, output: str | None = None, **kwargs) -> ExportResult:
    """`export_model(..., fmt="onnx")`."""
    return export_model(model_arg, "onnx", output, **kwargs)
