"""Device choice and what the device can do. The library never prints: the CLI says which device `auto` chose."""

from __future__ import annotations

import torch

from cnncli.errors import UsageError


def pick_device(name: str = "auto") -> torch.device:
    """auto picks CUDA, then MPS, then CPU; an unavailable device is a UsageError."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            dev = torch.device("cuda")
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            dev = torch.device("mps")
        else:
            dev = torch.device("cpu")
        return dev
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):  # meta, xla...: nothing cnn can run a model on
        raise UsageError(f"unknown device {name!r}", "use auto, cpu, cuda, cuda:N or mps")
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


def bf16_supported(device: torch.device) -> bool:
    """True where bf16 autocast runs natively: CUDA with bf16, CPUs with AVX-512 BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


class evaluation_precision:
    """The numerics of every evaluation (`cnn eval`, the validation and test passes of `cnn train`): fp32, with
    TF32 off for matrix products and convolutions, so a figure one reports the other reproduces."""

    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self.saved
        return False


def training_kernels(device: torch.device, deterministic: bool) -> None:
    """Kernel settings for training on CUDA: TF32 for fp32 matrix products and convolutions on Ampere and newer
    (autocast covers the rest), cuDNN's autotuner unless the run must be deterministic."""
    if device.type != "cuda":
        return
    if torch.cuda.get_device_capability(device)[0] >= 8 and not deterministic:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = not deterministic
