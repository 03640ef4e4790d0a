"""`cnn benchmark`: one model in every form it can be deployed in, timed the same way and scored on the same images.

Each format is made once (`Benchmark.make`: a runner from engine/runner.py, and the file it runs, written under a
work folder) and scored; then every row is timed in three interleaved passes by `time_calls`: warm-up calls first
(torch.compile compiles then), then timed calls until both a minimum count and a third of --seconds are reached,
each call synchronised on CUDA; latency p50/p95 from all of a row's calls, throughput from their mean. Accuracy comes from `engine.evaluate.measure`, the path
`cnn eval` takes, on the split `cnn eval` picks. A format that cannot be made or run here is a row with its reason.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass

import torch

from cnncli.errors import CnnError, UsageError, raise_if_interrupted

FORMATS = ("torch", "torch-bf16", "torch-compile", "onnx", "onnx-int8", "onnx-fp16", "openvino", "onnx-cuda")


@dataclass
class Row:
    """One line of the table: the `--json` object's row, key for key."""

    format: str
    batch_size: int
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    images_per_second: float | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    error: str | None = None
    runtime: str = ""  # what ran it: pytorch-cpu, onnxruntime-cpu, openvino-cpu...
    runs: int = 0  # timed calls behind the percentiles

    def as_json(self) -> dict:
        return asdict(self)


def parse_formats(text: str | None) -> list[str]:
    if not text:
        return list(FORMATS)
    names = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in names if f not in FORMATS]
    if unknown or not names:
        raise UsageError(f"unknown format {', '.join(map(repr, unknown)) or repr(text)}", "use " + ",".join(FORMATS))
    return list(dict.fromkeys(names))


def parse_batch_sizes(text: str) -> list[int]:
    try:
        sizes = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sizes = []
    if not sizes or any(b < 1 or b > 4096 for b in sizes):
        raise UsageError(f"--batch-sizes must be whole numbers from 1 to 4096, got {text!r}", "e.g. 1,32")
    return list(dict.fromkeys(sizes))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation, as numpy's default."""
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


MIN_RUNS_PER_PASS = 4  # three passes: at least 12 timed calls a row


def time_calls(call, sync=lambda: None, *, seconds: float = 1.0, warmup: float = 0.2, min_runs: int = 10):
    """Per-call wall times (s) of `call()`: at least two warm-up calls and `warmup` seconds of them, then timed calls
    until `min_runs` and `seconds` are both reached (at most 10,000). `sync` waits for the device after each."""
    start, n = time.perf_counter(), 0
    while n < 2 or time.perf_counter() - start < warmup:
        call()
        sync()
        n += 1
    times: list[float] = []
    total = 0.0
    while len(times) < min_runs or (total < seconds and len(times) < 10_000):
        t = time.perf_counter()
        call()
        sync()
        times.append(time.perf_counter() - t)
        total += times[-1]
    return times


@dataclass
class _Made:
    runner: object
    size: int | None
    path: str


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:300]


class Benchmark:
    """Makes the formats of one model and measures them."""

    def __init__(self, model_arg: str, request, device: torch.device, workdir: str, threads: int, log):
        from cnncli.engine.runner import is_onnx

        self.model_arg, self.request, self.device, self.workdir = model_arg, request, device, workdir
        self.threads, self.log = threads, log
        self.onnx_model = is_onnx(model_arg)
        self._fp32: str | None = None

    def check(self) -> None:
        """MODEL opens (else the command's exit 2, before anything is made or timed)."""
        from cnncli.engine.runner import open_runner

        open_runner(self.model_arg, self.request, "cpu")

    def _size(self) -> int | None:
        return os.path.getsize(self.model_arg) if os.path.isfile(self.model_arg) else None

    def fp32_file(self) -> str:
        """The model as a verified fp32 ONNX file (the model itself when it is one)."""
        if self.onnx_model:
            return self.model_arg
        if self._fp32 is None:
            from cnncli.export import export_model

            path = os.path.join(self.workdir, "model.onnx")
            export_model(self.model_arg, "onnx", path, request=self.request, force=True)
            self._fp32 = path
        return self._fp32

    def _smaller(self, precision: str, calibration) -> str:
        from cnncli.export.onnx_format import _onnx_metadata, read_onnx_metadata
        from cnncli.export.quantize import calibration_batches, make_fp16, make_int8

        if precision == "int8" and calibration is None:  # said before anything is exported
            raise UsageError("needs --data to calibrate")
        src = self.fp32_file()
        dst = os.path.join(self.workdir, f"model-{precision}.onnx")
        if precision == "int8":
            from cnncli.engine.runner import OnnxRunner

            pre = OnnxRunner(src, self._plain()).preprocess
            batches, used = calibration_batches(calibration.data, pre, calibration.images)
            info = {
                **make_int8(src, dst, batches),
                "calibration_images": used,
                "calibration_data": calibration.data.name,
            }
        else:
            info = make_fp16(src, dst)
        _onnx_metadata(dst, {**read_onnx_metadata(src, required=()), "precision": precision, "quantization": info})
        return dst

    def _plain(self):
        """The request for files cnn made itself: their metadata says everything; for the user's own ONNX file, the
        command line's."""
        from cnncli.models.open import ModelRequest

        return self.request if self.onnx_model else ModelRequest()

    def _torch(self, fmt: str) -> _Made:
        """torch (eager), torch-bf16 (autocast) or torch-compile: BatchNorm folded, channels_last."""
        from cnncli.engine.device import bf16_supported
        from cnncli.engine.runner import TorchRunner
        from cnncli.models.open import open_model, resolve_preprocess

        if fmt == "torch-bf16" and not bf16_supported(self.device):
            raise UsageError(f"{self.device} has no native bfloat16 (CPUs: AVX-512 BF16 or AMX)")
        opened = open_model(self.model_arg, self.request)
        bf16, compiled = fmt == "torch-bf16", fmt == "torch-compile"
        run = TorchRunner(opened, self.device, fast=True, path=self.model_arg, bf16=bf16, compiled=compiled)
        if run.preprocess is None:
            run.preprocess = resolve_preprocess(opened.spec, self.request, {})[0]
        return _Made(run, self._size(), self.model_arg)

    def make(self, fmt: str, calibration) -> _Made:
        from cnncli.engine import runner as r

        torch_format = fmt.startswith("torch")
        if torch_format and self.onnx_model:
            raise UsageError("MODEL is an ONNX file: give the PyTorch model for the torch rows")
        if torch_format:
            return self._torch(fmt)
        if fmt == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                raise UsageError("OpenVINO is not installed", "pip install 'cnncli[openvino]'") from None
            path = self.fp32_file()
            return _Made(r.OpenVinoRunner(path, self._plain(), threads=self.threads), os.path.getsize(path), path)
        if fmt == "onnx-cuda":
            import onnxruntime as ort

            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError(
                    "ONNX Runtime has no CUDA provider here",
                    "pip install onnxruntime-gpu, on a machine with a CUDA GPU",
                )
            path = self.fp32_file()
            run = r.OnnxRunner(path, self._plain(), providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
            return _Made(run, os.path.getsize(path), path)
        if self.onnx_model and fmt != "onnx":
            raise UsageError("MODEL is an ONNX file: it runs as it is (the onnx row)")
        path = self.fp32_file() if fmt == "onnx" else self._smaller(fmt.split("-")[1], calibration)
        return _Made(r.OnnxRunner(path, self._plain(), threads=self.threads), os.path.getsize(path), path)

    def time(self, made: _Made, batch: int, seconds: float, warmup: float = 0.2) -> tuple[list[float], str | None]:
        runner = made.runner
        c, h, w = runner.preprocess.input_size
        x = torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(0)).to(runner.device)
        call = runner.timed_call(x)
        if call is None:
            return [], "the file takes another batch size only (exported with --static-batch)"
        sync = torch.cuda.synchronize if runner.device.type == "cuda" else (lambda: None)
        return time_calls(call, sync, seconds=seconds, warmup=warmup, min_runs=MIN_RUNS_PER_PASS), None


def run_benchmark(
    model_arg: str,
    formats: list[str],
    batch_sizes: list[int],
    *,
    device: torch.device,
    request,
    workdir: str,
    threads: int,
    data=None,
    calibration=None,
    seconds: float = 1.0,
    log=lambda msg: None,
) -> list[Row]:
    """Every format at every batch size: a Row each, an error row for what cannot be made or run here. Every format
    is made and scored first; then the timings, in PASSES interleaved passes over all rows (a burst of other work
    on the machine spreads over every row instead of falling on one)."""
    bench = Benchmark(model_arg, request, device, workdir, threads, log)
    bench.check()
    rows: list[Row] = []
    ready = []  # (row, made) for the rows that are timed
    for fmt in formats:
        made, error = _made(bench, fmt, calibration, log)
        if made is None:
            rows += [Row(fmt, b, error=error) for b in batch_sizes]
            continue
        accuracy, accuracy_error = _accuracy(made, data)
        runtime = made.runner.device_label
        runtime = f"pytorch-{runtime}" if made.runner.kind == "pytorch" else runtime
        for b in batch_sizes:
            row = Row(fmt, b, size_bytes=made.size, accuracy=accuracy, runtime=runtime)
            row.error = f"accuracy: {accuracy_error}" if accuracy_error else None
            rows.append(row)
            ready.append((row, made))
    times: dict[int, list[float]] = {id(row): [] for row, _ in ready}
    for p in range(PASSES):
        for row, made in ready:
            if row.error and not row.error.startswith("accuracy:"):
                continue
            try:
                got, error = bench.time(made, row.batch_size, seconds / PASSES, warmup=0.2 if p == 0 else 0.02)
            except Exception as e:
                raise_if_interrupted()
                got, error = [], f"{type(e).__name__}: {_reason(e)}"
            times[id(row)] += got
            row.error = error or row.error
    for row, _ in ready:
        _fill(row, times[id(row)], log)
    return rows


PASSES = 3


def _made(bench: Benchmark, fmt: str, calibration, log) -> tuple[_Made | None, str | None]:
    try:
        t0 = time.perf_counter()
        made = bench.make(fmt, calibration)
        log(f"{fmt}: ready ({made.runner.device_label}, {time.perf_counter() - t0:.1f} s to make)")
        return made, None
    except CnnError as e:
        error = _reason(e)
    except Exception as e:  # an exporter, compiler or runtime that fails on this model: said in the row
        raise_if_interrupted()
        error = f"{type(e).__name__}: {_reason(e)}"
    log(f"{fmt}: {error}")
    return None, error


def _accuracy(made: _Made, data) -> tuple[float | None, str | None]:
    """Top-1 on the split `cnn eval` picks, through its code (None without --data), or why it could not be had."""
    from cnncli.engine.evaluate import measure, pick_split

    if data is None:
        return None, None
    try:
        return measure(made.runner, data, pick_split(data, None)[0], path=made.path).accuracy, None
    except CnnError as e:
        return None, _reason(e)
    except Exception as e:
        raise_if_interrupted()
        return None, f"{type(e).__name__}: {_reason(e)}"


def _fill(row: Row, times: list[float], log) -> None:
    if not times:
        return
    row.latency_ms_p50 = percentile(times, 50) * 1000
    row.latency_ms_p95 = percentile(times, 95) * 1000
    row.images_per_second = row.batch_size * len(times) / sum(times)
    row.runs = len(times)
    log(f"{row.format} batch {row.batch_size}: p50 {row.latency_ms_p50:.2f} ms, {row.images_per_second:,.0f} img/s")
