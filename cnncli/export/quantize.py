"""Smaller, faster ONNX files from a verified fp32 one: int8 by ONNX Runtime's static quantization, fp16 by ONNX
Runtime's float16 converter, each measured by accuracy on held-out images instead of bitwise parity.

- `make_int8(src, dst, calibration)`: QDQ static quantization (`onnxruntime.quantization.quantize_static`), int8
  weights per output channel, uint8 activations, ranges from MinMax calibration on `calibration`: batches of the
  training split with the model's own preprocessing (`calibration_batches`), a seeded sample across the split.
  BatchNorm is folded before export (export/__init__), so each conv is quantized once.
- `make_fp16(src, dst)`: weights and activations in float16, the graph's input and output kept float32.
- `held_out_split(ds)` and `accuracy_gate(...)`: the fp32 and the smaller file scored on the same held-out
  images through `engine.evaluate.measure`, the one path `cnn eval` takes.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass, replace

from cnncli.errors import UsageError, WorkFailed, raise_if_interrupted

FP16_TOLERANCE = 1e-2  # fp16 logits against PyTorch's fp32: max |diff| / max |logit|
CALIBRATION_SEED = 0
CALIBRATION_BATCH = 32


@dataclass(frozen=True)
class Calibration:
    """What int8 quantization is calibrated on, and what the smaller file is gated on."""

    data: object  # a loaded dataset (cnncli.data)
    images: int  # --calib-images
    max_drop: float  # --max-drop: largest allowed loss of top-1 (0.01 = one point)


def held_out_split(ds) -> str:
    """The images a file is scored on, never the training images it was calibrated on: the test split (a
    dataset's, or a folder's test/), else the validation split (val/, or the seeded part cnn train holds out of a
    folder without one)."""
    for split in ("test", "val"):
        if split in ds.splits and ds.num_samples(split):
            return split
    raise UsageError(f"{ds.name} has no held-out images to score on", "add a test/ or val/ folder")


def calibration_batches(ds, preprocess, count: int, static_batch: int | None = None):
    """Up to `count` training images (a seeded sample across the split, so every class is seen), preprocessed the
    way the model expects, as float32 numpy batches. Returns (batches, images used)."""
    import torch

    from cnncli.data.datasets import TensorData
    from cnncli.engine.evaluate import batches_for

    if "train" not in ds.splits:
        raise UsageError(f"{ds.name} has no training split to calibrate on", "give a dataset with training images")
    data = ds.split("train")
    total = ds.num_samples("train")
    n = min(count, total)
    idx = torch.randperm(total, generator=torch.Generator().manual_seed(CALIBRATION_SEED))[:n].sort().values
    if isinstance(ds, TensorData):
        part = (data[0][idx], data[1][idx])
    else:
        part = [data[i] for i in idx.tolist()]
    sub = replace(ds, splits={"train": part})
    batch = static_batch or CALIBRATION_BATCH
    loader = batches_for(sub, "train", preprocess, batch_size=batch, workers=0)
    out = []
    for x, _ in loader:
        arr = x.float().cpu().numpy()
        if static_batch and len(arr) < static_batch:  # a file fixed to one batch size: the last batch repeated
            import numpy as np

            arr = np.concatenate([arr] * -(-static_batch // len(arr)))[:static_batch]
        out.append(arr)
    return out, n


def _sibling(path: str, tag: str) -> str:
    """A hidden temp path next to `path` (removed by the caller; `remove_stale_temp_files` after a SIGKILL)."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=f".tmp.{tag}.onnx", dir=folder)
    os.close(fd)
    return tmp


def _pre_processed(src: str, pre: str) -> str:
    """Shape inference and graph optimisation before quantizing, as ONNX Runtime advises; `pre`, or `src` as it is
    when the pre-processing cannot take the model."""
    try:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quant_pre_process(src, pre, skip_symbolic_shape=False)
        return pre
    except Exception:
        raise_if_interrupted()
        return src


def make_int8(src: str, dst: str, batches: list) -> dict:
    """Quantize the fp32 file `src` into `dst` (QDQ, int8 per-channel weights, uint8 activations, MinMax ranges
    from `batches`). Returns what was done, for the file's metadata."""
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    name = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            return None if b is None else {name: b}

    pre = _sibling(dst, "pre")
    try:
        source = _pre_processed(src, pre)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                source,
                dst,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )
    finally:
        if os.path.exists(pre):
            os.remove(pre)
    return {
        "method": "onnxruntime static quantization, QDQ",
        "weights": "int8, per output channel",
        "activations": "uint8",
        "calibration": "MinMax",
    }


def make_fp16(src: str, dst: str) -> dict:
    """`src` with float16 weights and activations into `dst`; input and output stay float32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values below fp16's range are clipped, said once per tensor
        m = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save(m, dst)
    return {"method": "onnxruntime float16 converter", "weights": "float16", "activations": "float16", "io": "float32"}


def accuracy_gate(fp32_path: str, small_path: str, precision: str, cal: Calibration, request, log) -> dict:
    """Top-1 of the fp32 file and of the `precision` file on the held-out split; WorkFailed when it dropped by more
    than cal.max_drop (the caller leaves no file). Returns the figures for the JSON and the metadata."""
    from cnncli.engine.evaluate import measure
    from cnncli.engine.runner import OnnxRunner

    ds = cal.data
    split = held_out_split(ds)
    ref = measure(OnnxRunner(fp32_path, request), ds, split, path=fp32_path)
    got = measure(OnnxRunner(small_path, request), ds, split, path=small_path)
    drop = ref.accuracy - got.accuracy
    figures = {
        "accuracy_fp32": ref.accuracy,
        f"accuracy_{precision}": got.accuracy,
        "evaluated_on": f"{ds.name} {split} ({got.samples:,} images)",
        "max_drop": cal.max_drop,
    }
    log(
        f"{precision}: top-1 {got.accuracy:.2%} against fp32 {ref.accuracy:.2%} on {ds.name} {split} "
        f"({got.samples:,} images): {'a drop of' if drop > 0 else 'a change of'} {abs(drop) * 100:.2f} points "
        f"(--max-drop {cal.max_drop:g})"
    )
    if drop > cal.max_drop + 1e-12:
        raise WorkFailed(
            f"the {precision} file loses {drop * 100:.2f} points of top-1 on {ds.name} {split} "
            f"({ref.accuracy:.2%} -> {got.accuracy:.2%}), more than --max-drop {cal.max_drop:g}",
            "no file was written; more --calib-images, or a larger --max-drop if that loss is acceptable",
        )
    return figures


def check_options(precision: str, fmt: str, data, calib_images: int, max_drop: float) -> None:
    """The int8/fp16 options that do not go together, before anything is opened or written."""
    import math

    if precision == "fp32":
        return
    if fmt != "onnx":
        raise UsageError(f"--{precision} is for ONNX files", f"use --onnx --{precision}")
    if precision == "int8" and not data:
        raise UsageError(
            "--int8 needs --data DATASET",
            "its training images calibrate the ranges, its held-out images check accuracy",
        )
    if not (isinstance(calib_images, int) and calib_images >= 1):
        raise UsageError(f"--calib-images must be at least 1, got {calib_images}")
    if not (math.isfinite(max_drop) and 0 <= max_drop <= 1):
        raise UsageError(f"--max-drop must be between 0 and 1, got {max_drop}", "0.01 allows one point of top-1")


def _fp16_logits(path: str, job, rel_tolerance: float | None) -> float:
    """max |fp16 file - PyTorch| / max |logit| on the export's check inputs; WorkFailed above `rel_tolerance`."""
    import torch

    from cnncli.engine.runtime import onnx_session, run_onnx
    from cnncli.export.base import diff_and_scale

    sess = onnx_session(path)
    name = sess.get_inputs()[0].name
    diff, scale = diff_and_scale(
        lambda x: torch.from_numpy(run_onnx(sess, {name: x.numpy()})[0]), job.model, job.shapes
    )
    rel = diff / scale if scale > 0 else diff
    limit = FP16_TOLERANCE if rel_tolerance is None else rel_tolerance
    if not rel <= limit:
        raise WorkFailed(
            f"the fp16 file's logits differ from PyTorch by {rel:.3g} of their scale (> {limit:g})",
            "no file was written; the model needs float32 (values beyond float16's range?)",
        )
    return rel


def _check_fits(preprocess, ds) -> None:
    """The dataset's images and classes fit the model (channels; classes matched by name, as cnn eval does)."""
    from cnncli.engine.evaluate import label_map

    if ds.input_size[0] != preprocess.input_size[0]:
        raise UsageError(
            f"the model takes {preprocess.input_size[0]}-channel images but {ds.name} has {ds.input_size[0]}",
            "calibrate and score on the dataset the model was trained for",
        )
    label_map(list(preprocess.classes), ds.classes, "the model", ds.name)


def _converted(convert, src: str, dst: str, *args) -> dict:
    """ONNX Runtime's converters fail in their own words: a full disk is the disk's error, the rest one line."""
    from cnncli.errors import CnnError
    from cnncli.fileio import os_error, write_error

    try:
        return convert(src, dst, *args)
    except CnnError:
        raise
    except Exception as e:
        raise_if_interrupted()
        err = write_error(e)
        if err is not None:
            raise os_error(err, dst) from None
        text = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise WorkFailed(
            f"ONNX Runtime could not convert this model: {type(e).__name__}: {text}",
            "no file was written; the fp32 file exports (cnn export MODEL --onnx)",
        ) from None


def smaller_file(job, precision: str, cal: Calibration | None, rel_tolerance: float | None, log, check: bool = True):
    """export_model's `finish` for int8 and fp16: the checked fp32 temp file is made smaller in place (int8:
    calibrated on `cal`), checked (fp16: logits within `rel_tolerance` of their scale; both: top-1 on `cal`'s
    held-out split, when `cal` is given), and given the metadata of what was done. `check` False: unmeasured."""
    from cnncli.export.onnx_format import _onnx_metadata, read_onnx_metadata
    from cnncli.models.open import ModelRequest

    batches, used = None, 0
    if cal is not None:  # before anything is written: a dataset that does not fit the model is exit 2
        _check_fits(job.preprocess, cal.data)
    if precision == "int8":
        batches, used = calibration_batches(cal.data, job.preprocess, cal.images, job.static_batch)

    def finish(tmp: str) -> dict:
        small = _sibling(tmp, precision)
        try:
            if precision == "int8":
                log(f"int8: calibrating on {used:,} {cal.data.name} training images")
                made = _converted(make_int8, tmp, small, batches)
                info = {**made, "calibration_images": used, "calibration_data": cal.data.name}
            else:
                info = _converted(make_fp16, tmp, small)
            figures: dict = {"calibration_images": used} if precision == "int8" else {}
            if precision == "fp16" and check:  # int8 is judged by accuracy, not by logits
                figures["max_rel_diff"] = _fp16_logits(small, job, rel_tolerance)
            if cal is not None and check:
                figures.update(accuracy_gate(tmp, small, precision, cal, ModelRequest(), log))
            meta = read_onnx_metadata(tmp, required=())
            _onnx_metadata(small, {**meta, "precision": precision, "quantization": {**info, **figures}})
            os.replace(small, tmp)
        finally:
            if os.path.exists(small):
                os.remove(small)
        return figures

    return finish
