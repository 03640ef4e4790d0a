"""Export formats as a table, and one path for all of them: open, prepare, write a temp file, verify, rename.

`export_formats()` lists what `cnn export --format NAME` can write (Ultralytics' `export_formats()` idea). Each
format has one or more writers tried in order (ONNX: the dynamo exporter, then TorchScript-based
`torch.onnx.export`, since the dynamo exporter has produced wrong CNN graphs in some torch releases) and a
check that runs the written file against PyTorch on several input shapes. The file appears under its name only
once a writer's output passed the check; otherwise nothing is left behind. Preprocessing facts go into the file,
so a consumer can prepare inputs without cnncli.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnncli import __version__
from cnncli.errors import CnnError, UsageError, WorkFailed, raise_if_interrupted
from cnncli.fileio import atomic_write, check_output, ensure_free_space, os_error, remove_stale_temp_files, write_error


@dataclass
class ExportJob:
    """What every writer and check gets: the model, its folded copy, an example input, the shapes to check."""

    model: nn.Module  # the reference: the model as trained, in eval mode
    prepared: nn.Module  # what is written: BatchNorm folded into the convolutions
    example: torch.Tensor
    shapes: list[tuple[int, ...]]  # input shapes the check runs
    metadata: dict  # preprocessing and provenance, written into the file
    opset: int = 18
    dynamic_batch: bool = True
    dynamic_size: bool = False


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format NAME
    suffix: str  # default output: MODEL with this suffix
    description: str
    writers: dict[str, Callable[[ExportJob, str], None]]  # name -> write(job, path), tried in order
    check: Callable[[str, ExportJob], float]  # max |file - PyTorch| over job.shapes
    describe: Callable[[str], tuple[list[dict], list[dict]]]  # (inputs, outputs) with names and shapes
    flag: str = ""  # a short alias flag, e.g. --onnx


@dataclass
class ExportResult:
    path: str
    format: str
    opset: int | None
    exporter: str
    max_abs_diff: float | None
    inputs: list[dict]
    outputs: list[dict]
    size_bytes: int
    checked: list[list[int]]
    metadata: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "format": self.format,
            "opset": self.opset,
            "exporter": self.exporter,
            "max_abs_diff": self.max_abs_diff,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "size_bytes": self.size_bytes,
            "checked_shapes": self.checked,
            "metadata": self.metadata,
        }


# ------------------------------------------------------------------------------------------------ shared steps


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv+BatchNorm pairs folded into one conv (eval mode), via torch.fx; the model itself if untraceable."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval(), inplace=False)
    except Exception:
        return model.eval()


def check_shapes(input_size, dynamic_batch: bool, dynamic_size: bool, stride=(1, 1)) -> list[tuple[int, ...]]:
    c, h, w = input_size
    batches = [1, 2, 5] if dynamic_batch else [1]
    shapes = [(b, c, h, w) for b in batches]
    if dynamic_size:
        sh, sw = stride
        shapes += [(2, c, h + 3 * sh, w + sh), (1, c, 2 * h, w + 5 * sw + 1), (3, c, h + 1, 2 * w + 2)]
    return shapes


def _max_diff(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, shapes) -> float:
    """Max |run(x) - reference(x)| over seeded inputs of the given shapes (inf on a shape mismatch)."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = reference(x).float()
            got = run(x).float()
        if tuple(got.shape) != tuple(ref.shape):
            return float("inf")
        diff = (got - ref).abs()
        # NaN-aware: max() would drop a NaN; a NaN or infinity on either side is no match, however equal the rest
        if not bool(torch.isfinite(got).all() and torch.isfinite(ref).all()):
            return float("nan")
        worst = max(worst, float(diff.max()))
    return worst


# -------------------------------------------------------------------------------------------------------- ONNX


@contextmanager
def _quiet_exporters():
    """torch.onnx reports through Python warnings and logging (a version-converter traceback among them); what
    matters reaches the user as the export's result or its one error line."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _onnx_opset(path: str) -> int:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), 0)


def _onnx_dynamo(job: ExportJob, path: str) -> None:
    with _quiet_exporters():
        prog = torch.onnx.export(
            job.prepared,
            (job.example,),
            None,
            dynamo=True,
            opset_version=job.opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=_dynamic_shapes(job),
            verbose=False,
        )
        prog.save(path)
    written = _onnx_opset(path)
    if written != job.opset:  # below its own minimum the dynamo exporter writes its minimum instead
        raise ValueError(f"it wrote opset {written}, not the requested {job.opset}")
    _onnx_metadata(path, {**job.metadata, "exporter": "dynamo"})


def _onnx_torchscript(job: ExportJob, path: str) -> None:
    axes = ({0: "batch"} if job.dynamic_batch else {}) | ({2: "height", 3: "width"} if job.dynamic_size else {})
    with _quiet_exporters():
        torch.onnx.export(
            job.prepared,
            (job.example,),
            path,
            dynamo=False,
            opset_version=job.opset,
            input_names=["input"],
            output_names=["logits"],
            do_constant_folding=True,
            dynamic_axes={"input": axes, "logits": dict(axes)} if axes else None,
        )
    _onnx_metadata(path, {**job.metadata, "exporter": "torchscript"})


def _onnx_metadata(path: str, meta: dict) -> None:
    """Readable dynamic dims, and the metadata: every value is JSON, strings included (one rule for consumers)."""
    import onnx

    m = onnx.load(path)
    _name_dynamic_dims(m)
    del m.metadata_props[:]
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key = k
        entry.value = json.dumps(v)
    m.producer_name = "cnncli"
    m.producer_version = __version__
    onnx.save(m, path)


def _name_dynamic_dims(m) -> None:
    """Give the exporter's symbolic dims (s0, s53...) readable names: batch, height, width."""
    import re

    names = {}
    for i, d in enumerate(m.graph.input[0].type.tensor_type.shape.dim):
        if d.dim_param:
            names[d.dim_param] = ("batch", "channels", "height", "width")[i]
            d.dim_param = names[d.dim_param]
    if not names:
        return
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names, key=len, reverse=True))) + r")\b")
    for o in m.graph.output:
        for d in o.type.tensor_type.shape.dim:
            if d.dim_param:
                d.dim_param = pattern.sub(lambda mt: names[mt.group(1)], d.dim_param)


def _onnx_check(path: str, job: ExportJob) -> float:
    """onnx's full checker, then ONNX Runtime against PyTorch."""
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return _max_diff(lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0]), job.model, job.shapes)


def _onnx_describe(path: str) -> tuple[list[dict], list[dict]]:
    from cnncli.engine.runtime import read_onnx

    m = read_onnx(path)

    def desc(v):
        return {"name": v.name, "shape": [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}

    return [desc(i) for i in m.graph.input], [desc(o) for o in m.graph.output]


def read_onnx_metadata(path: str, required=("input_size", "mean", "std")) -> dict:
    """The metadata of an ONNX file written by `cnn export` (JSON values decoded); `required` keys must be there."""
    from cnncli.engine.runtime import read_onnx

    m = read_onnx(path)
    out = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    missing = [k for k in required if k not in out]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)} metadata", "export it with cnn export")
    return out


# ------------------------------------------------------------------------------------------ torch.export (.pt2)

from cnncli.models.files import PT2_METADATA  # noqa: E402  (the program's extra file with the metadata)


def _dynamic_shapes(job: ExportJob):
    from torch.export import Dim

    shapes = {}
    if job.dynamic_batch:
        shapes[0] = Dim("batch", min=1, max=65536)
    if job.dynamic_size:
        shapes[2] = Dim.DYNAMIC
        shapes[3] = Dim.DYNAMIC
    return (shapes,) if shapes else None


def _pt2_export(job: ExportJob, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(job.prepared, (job.example,), dynamic_shapes=_dynamic_shapes(job))
    # torch.export's writer aborts the interpreter (a C++ backtrace) on a full disk: refuse before it starts
    ensure_free_space(path, 2 * sum(t.numel() * t.element_size() for t in job.model.state_dict().values()) + (8 << 20))
    torch.export.save(program, path, extra_files={PT2_METADATA: json.dumps({**job.metadata, "exporter": "export"})})


def _pt2_load(path: str, extra: dict | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(path, extra_files=extra).module()


def _pt2_check(path: str, job: ExportJob) -> float:
    return _max_diff(_pt2_load(path), job.model, job.shapes)


def _pt2_describe(path: str) -> tuple[list[dict], list[dict]]:
    """Shapes as the ONNX files name them: dynamic dims by name, the rest measured by running the program."""
    extra = {PT2_METADATA: ""}
    module = _pt2_load(path, extra)
    meta = json.loads(extra[PT2_METADATA])
    c, h, w = meta["input_size"]
    with torch.no_grad():
        out = list(module(torch.zeros(2 if meta.get("dynamic_batch") else 1, c, h, w)).shape)
    dyn_size = meta.get("dynamic_size")
    names = ["batch" if meta.get("dynamic_batch") else 1, c, *(["height", "width"] if dyn_size else [h, w])]
    out_names = [names[0], *out[1:2], *(["height'", "width'"] if dyn_size else out[2:])]
    return [{"name": "input", "shape": names}], [{"name": "logits", "shape": out_names}]


# ----------------------------------------------------------------------------------------------------- the table


def export_formats() -> dict[str, ExportFormat]:
    """Every format `cnn export` writes, by `--format` name."""
    return {
        "onnx": ExportFormat(
            "onnx",
            ".onnx",
            "ONNX for ONNX Runtime, TensorRT, OpenVINO...",
            {"dynamo": _onnx_dynamo, "torchscript": _onnx_torchscript},
            _onnx_check,
            _onnx_describe,
            flag="--onnx",
        ),
        "pt2": ExportFormat(
            "pt2",
            ".pt2",
            "torch.export program for torch.export.load, AOTInductor, ExecuTorch",
            {"export": _pt2_export},
            _pt2_check,
            _pt2_describe,
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
    return ExportJob(model, fold_batchnorm(model), example, shapes, meta, opset, dynamic_batch, dynamic_size)


def _bare_preprocess(opened):
    """A registry architecture with nothing known about its data: its own defaults (logged by the caller)."""
    from cnncli.models.open import ModelRequest, resolve_preprocess

    pre, _ = resolve_preprocess(opened.spec, ModelRequest(), {})
    return pre


def default_output(model_arg: str, suffix: str) -> str:
    """MODEL with the format's suffix: runs/train/best.pt -> runs/train/best.onnx; a registry name -> NAME.onnx
    in the current folder (tv:resnet18 -> tv-resnet18.onnx; my_net.py:Net -> my_net-Net.onnx)."""
    import re

    from cnncli.models.open import is_checkpoint_path

    if is_checkpoint_path(model_arg):
        return os.path.splitext(model_arg)[0] + suffix
    base = os.path.basename(model_arg).replace(".py:", "-")
    return re.sub(r"[^\w.-]+", "-", base).strip("-.") + suffix


def _write_verified(job: ExportJob, fmt: ExportFormat, writer: str, out: str, check: bool, tolerance: float):
    """Write with one writer to a temp file, check it, rename it onto `out`. Returns the diff (None unchecked) or
    raises _Rejected with the reason; a rejected file never appears."""
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
            result["diff"] = fmt.check(tmp, job) if check else None
        except Exception as e:  # the file does not run on one of the checked shapes (e.g. a shape guard)
            raise_if_interrupted()
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise _Rejected(f"{writer} file fails the check: {type(e).__name__}: {msg}") from None
        if check and math.isnan(result["diff"]):
            raise WorkFailed("the model's outputs are NaN or infinite on the check inputs", "no file was written")
        if check and not result["diff"] <= tolerance:
            raise _Rejected(f"{writer} graph differs from PyTorch by {result['diff']:.3g} (> {tolerance:g})")

    atomic_write(out, write, suffix=".tmp" + fmt.suffix)  # some writers check the extension
    return result["diff"]


class _Rejected(Exception):
    pass


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
) -> ExportResult:
    """Export a model file to `fmt`, verified against PyTorch, written atomically."""
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
    out = check_output(output or default_output(model_arg, spec.suffix), [model_arg], force)
    job = _prepare(
        model_arg, spec, opset=opset, dynamic_batch=dynamic_batch, dynamic_size=dynamic_size, request=request, log=log
    )
    from cnncli.engine.runtime import check_finite_weights

    check_finite_weights(job.model, model_arg)
    if isinstance(job.model, torch.jit.ScriptModule) and exporter == "auto":  # torch.export cannot trace TorchScript
        writers = [w for w in writers if w != "dynamo"] or writers
    remove_stale_temp_files(os.path.dirname(os.path.abspath(out)), out)  # of an export that was killed
    failures = []
    for i, writer in enumerate(writers):
        try:
            diff = _write_verified(job, spec, writer, out, check, tolerance)
        except _Rejected as e:
            failures.append(str(e))
            if i + 1 < len(writers):  # the last failure is the error message itself
                log(f"{failures[-1]}; trying the {writers[i + 1]} exporter")
            continue
        inputs, outputs = spec.describe(out)
        return ExportResult(
            out,
            fmt,
            _onnx_opset(out) if fmt == "onnx" else None,
            writer,
            diff,
            inputs,
            outputs,
            os.path.getsize(out),
            [list(s) for s in job.shapes],
            {**job.metadata, "exporter": writer},
        )
    hint = "no file was written"
    if job.dynamic_size:
        hint += "; --static-size exports the model for the training size only"
    raise WorkFailed("; ".join(failures), hint)


def export_onnx(model_arg: str, output: str | None = None, **kwargs) -> ExportResult:
    """`export_model(..., fmt="onnx")`."""
    return export_model(model_arg, "onnx", output, **kwargs)
