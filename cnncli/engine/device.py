"""Device and precision choice."""

from __future__ import annotations

import sys

import torch

from cnncli.errors import UsageError


def pick_device(name: str = "auto", quiet: bool = False) -> torch.device:
    """auto picks CUDA, then MPS, then CPU, and says which; an unavailable device is a UsageError."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
        if not quiet:
            print(f"device: {dev} (auto)", file=sys.stderr)
        return dev
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("CUDA is not available on this machine", "use --device cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UsageError(f"no {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("MPS is not available on this machine", "use --device cpu or auto")
    return dev


def cpu_has_bf16() -> bool:
    """True on CPUs with native bf16 support (AVX-512 BF16 or AMX), as oneDNN sees them."""
    try:
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return True
    except (AttributeError, RuntimeError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def pick_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 on CUDA with bf16 and on bf16-capable CPUs, fp16 on older GPUs, fp32 otherwise."""
    precision = str(precision).lower()
    if precision in ("32", "fp32", "float32"):
        return "32"
    if precision in ("bf16", "bfloat16"):
        return "bf16"
    if precision in ("16", "fp16", "float16"):
        if device.type == "cpu":
            raise UsageError("fp16 training is for GPUs", "use --precision bf16 or 32 on CPU")
        return "16"
    if precision != "auto":
        raise UsageError(f"unknown precision {precision!r}", "use auto, 32, bf16 or 16")
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "16"
    if device.type == "cpu" and cpu_has_bf16():
        return "bf16"
    return "32"
