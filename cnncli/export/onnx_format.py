"""The ONNX format: two writers (the dynamo exporter, then TorchScript-based `torch.onnx.export`, since the dynamo
exporter has produced wrong CNN graphs in some torch releases), the metadata every file carries (JSON values), its
check in ONNX Runtime against PyTorch, and reading a file's metadata back."""

from __future__ import annotations

import json
import logging
import warnings
from contextlib import contextmanager

import torch

from cnncli import __version__
from cnncli.errors import UsageError
from cnncli.export.base import ExportJob, diff_and_scale
from cnncli.export.pt2_format import dynamic_shapes


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


def onnx_opset(path: str) -> int:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return next((i.version for i in m.opset_import if i.domain in ("", "ai.onnx")), 0)


def onnx_dynamo(job: ExportJob, path: str) -> None:
    with _quiet_exporters():
        prog = torch.onnx.export(
            job.prepared,
            (job.example,),
            None,
            dynamo=True,
            opset_version=job.opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=dynamic_shapes(job),
            verbose=False,
        )
        prog.save(path)
    written = onnx_opset(path)
    if written != job.opset:  # below its own minimum the dynamo exporter writes its minimum instead
        raise ValueError(f"it wrote opset {written}, not the requested {job.opset}")
    _onnx_metadata(path, {**job.metadata, "exporter": "dynamo"})


def onnx_torchscript(job: ExportJob, path: str) -> None:
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


def onnx_check(path: str, job: ExportJob) -> tuple[float, float]:
    """onnx's full checker, then ONNX Runtime against PyTorch: (max |diff|, max |PyTorch logit|)."""
    import onnx

    from cnncli.engine.runtime import onnx_session, run_onnx

    onnx.checker.check_model(path, full_check=True)
    sess = onnx_session(path)
    name = sess.get_inputs()[0].name
    return diff_and_scale(lambda x: torch.from_numpy(run_onnx(sess, {name: x.numpy()})[0]), job.model, job.shapes)


def onnx_describe(path: str) -> tuple[list[dict], list[dict]]:
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
