"""How raw images become a model's input: the one description every command uses.

A `Preprocess` holds the input size, the per-channel mean/std (of pixels scaled to 0..1) and the class names.
Training loaders, `cnn eval`, `cnn scoremap`, `cnn export` (as ONNX metadata) and every consumer of an exported
file apply it the same way: `(pixels / 255 - mean) / std`, computed as one multiply-add `pixels * scale + shift`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def affine(mean, std, device="cpu"):
    """The normalization `(pixels / 255 - mean) / std` as `pixels * scale + shift`: (scale, shift) [1, C, 1, 1]."""
    import torch

    c = len(mean)
    mean_ = torch.tensor(mean, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255
    std_ = torch.tensor(std, dtype=torch.float32, device=device).view(1, c, 1, 1) * 255
    return 1.0 / std_, -mean_ / std_


@dataclass(frozen=True)
class Preprocess:
    input_size: tuple[int, int, int]  # (C, H, W) the model was trained at
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        """Every field is checked once, here, whatever made it (a checkpoint, ONNX metadata, the command line)."""
        if len(self.input_size) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in self.input_size
        ):
            raise ValueError(f"input size {self.input_size!r} is not C, H, W")
        c = self.input_size[0]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"mean/std need {c} values, got {len(self.mean)}/{len(self.std)}")
        import math

        for v in (*self.mean, *self.std):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"mean/std values must be finite numbers, got {v!r}")
        if any(v <= 0 for v in self.std):
            raise ValueError(f"std values must be > 0, got {self.std}")
        if not all(isinstance(n, str) for n in self.classes):
            raise ValueError("class names must be strings")

    @property
    def channels(self) -> int:
        return self.input_size[0]

    def class_names(self, num_classes: int) -> list[str]:
        """The class names, or "0".."k-1" when none are recorded."""
        return list(self.classes) if len(self.classes) == num_classes else [str(i) for i in range(num_classes)]

    def affine(self, device="cpu"):
        """(scale, shift) as [1, C, 1, 1] float tensors with `pixels * scale + shift` = normalized input."""
        return affine(self.mean, self.std, device)

    def normalize(self, pixels, device=None):
        """uint8 pixels [C, H, W] or [N, C, H, W] -> normalized float32 on `device` (default: where they are)."""
        device = pixels.device if device is None else device
        scale, shift = self.affine(device)
        x = pixels.to(device)
        if x.dim() == 3:
            return x[None].float().mul_(scale).add_(shift)[0]
        return x.float().mul_(scale).add_(shift)

    def to_metadata(self) -> dict:
        """The keys `cnn export` writes into a file's metadata (and `from_metadata` reads back)."""
        return {
            "classes": list(self.classes),
            "input_size": list(self.input_size),
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_metadata(cls, meta: dict) -> Preprocess:
        c, h, w = (int(v) for v in meta["input_size"])
        return cls(
            (c, h, w),
            tuple(float(v) for v in meta["mean"]),
            tuple(float(v) for v in meta["std"]),
            tuple(str(v) for v in meta.get("classes") or ()),
        )
