"""What every export format shares: the job a writer gets, a format's entry in the table, the result, and the
check that runs a written file against PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn


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
    preprocess: object = None  # cnncli.preprocess.Preprocess: how images become inputs (calibration uses it)

    @property
    def static_batch(self) -> int | None:
        """The one batch size the file takes (the example's), or None for a dynamic batch."""
        return None if self.dynamic_batch else int(self.example.shape[0])


@dataclass(frozen=True)
class ExportFormat:
    name: str  # --format NAME
    suffix: str  # default output: MODEL with this suffix
    description: str
    writers: dict[str, Callable[[ExportJob, str], None]]  # name -> write(job, path), tried in order
    check: Callable[[str, ExportJob], tuple[float, float]]  # (max |file - PyTorch|, max |PyTorch|) over job.shapes
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
    precision: str = "fp32"
    figures: dict = field(default_factory=dict)
    output_scale: float | None = None  # max |PyTorch logit| over the check inputs
    allowed: float | None = (
        None  # the max |diff| the check allowed: allowed_diff(tolerance, output_scale)  # int8/fp16: accuracy_fp32, accuracy_int8, calibration_images...
    )

    def as_dict(self) -> dict:
        return {
            **self.figures,
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
            "precision": self.precision,
            "output_scale": self.output_scale,
            "allowed_diff": self.allowed,
        }


def allowed_diff(tolerance: float, scale: float) -> float:
    """What the parity check allows: --tolerance times the outputs' scale, when that is above 1 (max |logit| over
    the check inputs). float32's own rounding through a deep network grows with the scale: for a randomly
    initialised inception_v3 (logits near 1e12) PyTorch's float32 and float64 differ by ~1e6, and an absolute
    1e-4 would refuse every exporter. For logits of order 1 it is the absolute tolerance; --tolerance 0 stays
    exact."""
    return tolerance * max(1.0, scale)


def check_shapes(input_size, dynamic_batch: bool, dynamic_size: bool, stride=(1, 1)) -> list[tuple[int, ...]]:
    c, h, w = input_size
    batches = [1, 2, 5] if dynamic_batch else [1]
    shapes = [(b, c, h, w) for b in batches]
    if dynamic_size:
        sh, sw = stride
        shapes += [(2, c, h + 3 * sh, w + sh), (1, c, 2 * h, w + 5 * sw + 1), (3, c, h + 1, 2 * w + 2)]
    return shapes


def max_diff(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, shapes) -> float:
    """Max |run(x) - reference(x)| over seeded inputs of the given shapes (inf on a shape mismatch)."""
    return diff_and_scale(run, reference, shapes)[0]


def diff_and_scale(run: Callable[[torch.Tensor], torch.Tensor], reference: nn.Module, shapes) -> tuple[float, float]:
    """(max |run(x) - reference(x)|, max |reference(x)|) over seeded inputs of the given shapes: the second is the
    scale a relative tolerance is taken of."""
    g = torch.Generator().manual_seed(0)
    worst, scale = 0.0, 0.0
    for shape in shapes:
        x = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ref = reference(x).float()
            got = run(x).float()
        if tuple(got.shape) != tuple(ref.shape):
            return float("inf"), float("nan")
        diff = (got - ref).abs()
        # NaN-aware: max() would drop a NaN; a NaN or infinity on either side is no match, however equal the rest
        if not bool(torch.isfinite(got).all() and torch.isfinite(ref).all()):
            return float("nan"), float("nan")
        worst, scale = max(worst, float(diff.max())), max(scale, float(ref.abs().max()))
    return worst, scale
