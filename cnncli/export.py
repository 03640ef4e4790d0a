"""ONNX export with a parity check: the file computes what the PyTorch model computes, or it is not written.

BatchNorm is folded into the preceding convolutions (eval mode) before export. The dynamo exporter is tried
first; if it fails or its graph disagrees with PyTorch (it has produced wrong CNN graphs in some torch releases),
the TorchScript exporter is used, and the result says which one. Preprocessing facts go into the file's
`metadata_props`, so a consumer can prepare inputs without cnncli.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn

from cnncli import __version__
from cnncli.errors import UsageError, WorkFailed


@dataclass
class ExportResult:
    path: str
    opset: int
    exporter: str
    max_abs_diff: float | None
    inputs: list[dict]
    outputs: list[dict]
    size_bytes: int
    checked: list[list[int]]
    metadata: dict

    def as_dict(self) -> dict:
        return {"path": self.path, "opset": self.opset, "exporter": self.exporter, "max_abs_diff": self.max_abs_diff,
                "inputs": self.inputs, "outputs": self.outputs, "size_bytes": self.size_bytes,
                "checked_shapes": self.checked, "metadata": self.metadata}


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv+BatchNorm pairs folded into one conv (eval mode), via torch.fx; the model itself if untraceable."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval(), inplace=False)
    except Exception:
        return model.eval()


def _io_info(model) -> tuple[list[dict], list[dict]]:
    def desc(v):
        dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims}

    return [desc(i) for i in model.graph.input], [desc(o) for o in model.graph.output]


def _export(model, example, path, opset, dynamo: bool, dynamic_batch: bool, dynamic_size: bool) -> None:
    axes = {}
    if dynamic_batch:
        axes[0] = "batch"
    if dynamic_size:
        axes.update({2: "height", 3: "width"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            from torch.export import Dim

            shapes = {}
            if dynamic_batch:
                shapes[0] = Dim("batch", min=1, max=65536)
            if dynamic_size:
                shapes[2] = Dim.DYNAMIC
                shapes[3] = Dim.DYNAMIC
            prog = torch.onnx.export(model, (example,), None, dynamo=True, opset_version=opset,
                                     input_names=["input"], output_names=["logits"],
                                     dynamic_shapes=(shapes,) if shapes else None, verbose=False)
            prog.save(path)
        else:
            torch.onnx.export(model, (example,), path, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], do_constant_folding=True,
                              dynamic_axes={"input": axes, "logits": dict(axes)} if axes else None)


def parity(path: str, reference: nn.Module, shapes: list[tuple[int, ...]]) -> float:
    """Max |ONNX Runtime - PyTorch| over seeded inputs of the given shapes."""
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = reference(x).float()
        got = torch.from_numpy(sess.run(None, {name: x.numpy()})[0])
        if tuple(got.shape) != tuple(ref.shape):
            return float("inf")
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def check_shapes(input_size, dynamic_batch: bool, dynamic_size: bool, stride=(1, 1)) -> list[tuple[int, ...]]:
    c, h, w = input_size
    batches = [1, 2, 5] if dynamic_batch else [1]
    shapes = [(b, c, h, w) for b in batches]
    if dynamic_size:
        sh, sw = stride
        shapes += [(2, c, h + 3 * sh, w + sh), (1, c, 2 * h, w + 5 * sw + 1), (3, c, h + 1, 2 * w + 2)]
    return shapes


def write_metadata(path: str, meta: dict) -> None:
    import onnx

    m = onnx.load(path)
    _name_dynamic_dims(m)
    del m.metadata_props[:]
    for k, v in meta.items():
        entry = m.metadata_props.add()
        entry.key = k
        entry.value = json.dumps(v)  # every value is JSON, strings included: one rule for consumers
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


def read_metadata(path: str) -> dict:
    """The preprocessing facts of an ONNX file written by `cnn export` (JSON values decoded)."""
    import onnx

    if not os.path.exists(path):
        raise UsageError(f"ONNX file not found: {path}")
    try:
        m = onnx.load(path, load_external_data=False)
    except Exception as e:
        raise UsageError(f"unreadable ONNX file {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    out = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except ValueError:
            out[p.key] = p.value
    missing = [k for k in ("input_size", "mean", "std") if k not in out]
    if missing:
        raise UsageError(f"{path} has no {', '.join(missing)} metadata", "export it with cnn export")
    return out


def export_onnx(ckpt_path: str, output: str | None = None, *, opset: int = 18, dynamic_batch: bool = True,
                dynamic_size: bool | None = None, check: bool = True, tolerance: float = 1e-4, force: bool = False,
                exporter: str = "auto", log=lambda msg: None) -> ExportResult:
    """Export a checkpoint to ONNX, verify it against PyTorch, and write it atomically."""
    import onnx

    from cnncli.engine.checkpoint import build_from_checkpoint, load_checkpoint

    out = output or os.path.splitext(ckpt_path)[0] + ".onnx"
    if os.path.exists(out) and not force:
        raise UsageError(f"{out} exists", "give another -o or --force to overwrite")
    if not 7 <= opset <= 23:
        raise UsageError(f"unsupported opset {opset}", "use 13..23 (default 18)")
    ckpt = load_checkpoint(ckpt_path)
    spec = ckpt["model"]
    fcn = ckpt.get("fcn")
    if dynamic_size is None:
        dynamic_size = bool(fcn)
    if dynamic_size and not fcn:
        raise UsageError("--dynamic-size needs a fully-convolutional checkpoint", f"run: cnn fcn {ckpt_path}")
    input_size = (spec["in_channels"], *spec["image_size"])
    model = build_from_checkpoint(ckpt).eval()
    folded = fold_batchnorm(model)
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(1))
    stride = tuple(fcn["stride"]) if fcn else (1, 1)
    shapes = check_shapes(input_size, dynamic_batch, dynamic_size, stride)
    norm = ckpt.get("normalization") or {}
    meta = {
        "model_name": spec["name"], "classes": list(ckpt.get("classes") or []), "input_size": list(input_size),
        "channel_order": "L" if input_size[0] == 1 else "RGB", "layout": "NCHW, float32, pixels/255 then (x-mean)/std",
        "mean": norm.get("mean", [0.0] * input_size[0]), "std": norm.get("std", [1.0] * input_size[0]),
        "dataset": ckpt.get("dataset") or "", "cnncli_version": __version__, "torch_version": str(torch.__version__),
        "fully_convolutional": bool(fcn),
    }
    if fcn:
        meta.update({"stride": fcn["stride"], "receptive_field": fcn["receptive_field"], "offset": fcn["offset"]})

    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    order = {"auto": [True, False], "dynamo": [True], "torchscript": [False]}[exporter]
    failures = []
    for use_dynamo in order:
        name = "dynamo" if use_dynamo else "torchscript"
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(out) + ".", suffix=".tmp", dir=folder)
        os.close(fd)
        try:
            try:
                _export(folded, example, tmp, opset, use_dynamo, dynamic_batch, dynamic_size)
            except Exception as e:
                failures.append(f"{name} exporter failed: {type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}")
                log(failures[-1] + ("; trying the TorchScript exporter" if use_dynamo and len(order) > 1 else ""))
                continue
            write_metadata(tmp, {**meta, "exporter": name})
            diff = None
            if check:
                onnx.checker.check_model(tmp, full_check=True)
                diff = parity(tmp, model, shapes)
                scale = 1.0
                if not diff <= tolerance * scale:
                    failures.append(f"{name} graph differs from PyTorch by {diff:.3g} (> {tolerance:g})")
                    log(failures[-1] + ("; trying the TorchScript exporter" if use_dynamo and len(order) > 1 else ""))
                    continue
            os.replace(tmp, out)
            tmp = None
            m = onnx.load(out, load_external_data=False)
            inputs, outputs = _io_info(m)
            return ExportResult(out, opset, name, diff, inputs, outputs, os.path.getsize(out), [list(s) for s in shapes],
                                {**meta, "exporter": name})
        finally:
            if tmp and os.path.exists(tmp):
                os.remove(tmp)
    raise WorkFailed("; ".join(failures), "no file was written")
