"""The torch.export format (`.pt2`): the program, its metadata as an extra file, and its check against PyTorch."""

from __future__ import annotations

import json
import warnings

import torch

from cnncli.export.base import ExportJob, diff_and_scale
from cnncli.fileio import ensure_free_space
from cnncli.models.files import PT2_METADATA  # the program's extra file with the metadata


def dynamic_shapes(job: ExportJob):
    from torch.export import Dim

    shapes = {}
    if job.dynamic_batch:
        shapes[0] = Dim("batch", min=1, max=65536)
    if job.dynamic_size:
        shapes[2] = Dim.DYNAMIC
        shapes[3] = Dim.DYNAMIC
    return (shapes,) if shapes else None


def pt2_export(job: ExportJob, path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(job.prepared, (job.example,), dynamic_shapes=dynamic_shapes(job))
    # torch.export's writer aborts the interpreter (a C++ backtrace) on a full disk: refuse before it starts
    ensure_free_space(path, 2 * sum(t.numel() * t.element_size() for t in job.model.state_dict().values()) + (8 << 20))
    torch.export.save(program, path, extra_files={PT2_METADATA: json.dumps({**job.metadata, "exporter": "export"})})


def _pt2_load(path: str, extra: dict | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.export.load(path, extra_files=extra).module()


def pt2_check(path: str, job: ExportJob) -> tuple[float, float]:
    """(max |program - PyTorch|, max |PyTorch logit|) over the check shapes."""
    return diff_and_scale(_pt2_load(path), job.model, job.shapes)


def pt2_describe(path: str) -> tuple[list[dict], list[dict]]:
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
