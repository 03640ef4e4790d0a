"""The `lines` task: images that contain only horizontal or only vertical lines (2 classes).

Generated deterministically from a seed with tensor ops: 1-3 lines per image, of random position, length,
thickness and brightness, on a noisy background. Class 0 = horizontal, 1 = vertical. `scene()` makes a large
image of regions of each kind, for score maps.
"""

from __future__ import annotations

import torch

CLASSES = ["horizontal", "vertical"]
SIZE = 32


def _draw(
    n: int, size: int, gen: torch.Generator, vertical: torch.Tensor, thickness=(1, 3), noise: float = 0.15
) -> torch.Tensor:
    """n images (float 0..1, [n, size, size]) with 1-3 lines each, horizontal or vertical per image."""
    lines = 3
    pos = torch.randint(0, size, (n, lines), generator=gen)
    length = torch.randint(size // 3, size + 1, (n, lines), generator=gen)
    start = (torch.rand(n, lines, generator=gen) * (size - length + 1).float()).long()
    thick = torch.randint(*thickness, (n, lines), generator=gen)
    bright = 0.5 + 0.5 * torch.rand(n, lines, generator=gen)
    present = torch.rand(n, lines, generator=gen) < torch.tensor([1.0, 0.6, 0.4])  # the first line always
    ar = torch.arange(size)
    # across: coordinate across the line, along: along it; a pixel is on where both are inside one line
    across = ar.view(1, 1, size, 1)
    along = ar.view(1, 1, 1, size)
    rows = (across >= pos[..., None, None]) & (across < (pos + thick)[..., None, None]) & present[..., None, None]
    cols = (along >= start[..., None, None]) & (along < (start + length)[..., None, None])
    img = ((rows * bright[..., None, None]) * cols).amax(1)  # [n, across, along]: horizontal lines
    img = torch.where(vertical.view(-1, 1, 1), img.transpose(1, 2), img)
    if not noise:
        return img
    return (img + noise * torch.rand(n, size, size, generator=gen)).clamp(0, 1)


def generate(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [n, 1, size, size], int64 labels [n]) from a seed."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    out = torch.empty(n, 1, size, size, dtype=torch.uint8)
    for i in range(0, n, 4096):
        j = min(n, i + 4096)
        out[i:j, 0] = (_draw(j - i, size, gen, labels[i:j].bool()) * 255).round().to(torch.uint8)
    return out, labels


def _to_uint8(img: torch.Tensor) -> torch.Tensor:
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)[:, None]


def modulated(n: int, seed: int, size: int = SIZE, period: float | None = 3.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 24.5.4's vulnerability: images of horizontal lines whose lines are multiplied along their length by
    cos(pi n / 3). They still look horizontal (dashed), but the modulation moves their spectral content to
    horizontal frequencies, where the vertical-line kernel looks. The signed product sits on the usual noisy
    background lifted by 0.05, so negative half-waves show darker than it. `period=None` gives the same images
    unmodulated: the control (the line detector reads those as horizontal)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.zeros(n, dtype=torch.long)  # all horizontal, as in the chapter's figure 24.22
    lines = _draw(n, size, gen, labels.bool(), noise=0)
    background = 0.05 + 0.15 * torch.rand(n, size, size, generator=gen)
    wave = torch.ones(size) if period is None else torch.cos(torch.pi * torch.arange(size).float() / period)
    return _to_uint8(background + 0.7 * lines * wave.view(1, 1, size)), labels


def ood(n: int, seed: int, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Chapter 24.5.3's out-of-domain set: horizontal or vertical structure that is not lines. Half are sinusoidal
    gratings (2-6 cycles per image, random phase), half thick filled bars (3-5 px), on the same noisy background."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=gen)
    freq = 2 + 4 * torch.rand(n, 1, 1, generator=gen)
    phase = 2 * torch.pi * torch.rand(n, 1, 1, generator=gen)
    rows = torch.arange(size).float().view(1, size, 1)
    grating = (0.5 + 0.5 * torch.cos(2 * torch.pi * freq * rows / size + phase)).expand(n, size, size)
    grating = torch.where(labels.view(-1, 1, 1) == 1, grating.transpose(1, 2), grating)
    grating = grating + 0.15 * torch.rand(n, size, size, generator=gen)
    bars = _draw(n, size, gen, labels.bool(), thickness=(3, 6))
    kind = (torch.arange(n) % 2 == 0).view(-1, 1, 1)
    return _to_uint8(torch.where(kind, grating, bars)), labels


def scene(
    height: int = 256, width: int = 256, regions: tuple[int, int] = (2, 2), seed: int = 0, size: int = SIZE
) -> tuple[torch.Tensor, torch.Tensor]:
    """A large image made of rectangular regions of horizontal or of vertical lines.

    Returns (uint8 image [1, H, W], int64 region label map [H, W]). Each region is tiled from generated
    size x size patches of one class, so every window inside a region shows only one orientation.
    """
    gen = torch.Generator().manual_seed(seed)
    rh, rw = regions
    label_map = torch.zeros(height, width, dtype=torch.long)
    kinds = torch.randint(0, 2, (rh, rw), generator=gen)
    if kinds.unique().numel() == 1:  # make sure both kinds appear
        kinds[0, 0] = 1 - kinds[0, 0]
    ys = torch.linspace(0, height, rh + 1).long()
    xs = torch.linspace(0, width, rw + 1).long()
    for a in range(rh):
        for b in range(rw):
            label_map[ys[a] : ys[a + 1], xs[b] : xs[b + 1]] = kinds[a, b]
    img = 0.15 * torch.rand(height, width, generator=gen)
    for vertical in (0, 1):
        # long lines across the whole image, kept only inside this class's regions
        n_lines = (width if vertical else height) // 8
        canvas = torch.zeros(height, width)
        for _ in range(n_lines):
            p = int(torch.randint(0, width if vertical else height, (1,), generator=gen))
            t = int(torch.randint(1, 3, (1,), generator=gen))
            b = 0.5 + 0.5 * float(torch.rand(1, generator=gen))
            if vertical:
                canvas[:, p : p + t] = b
            else:
                canvas[p : p + t, :] = b
        img = torch.where(label_map == vertical, torch.maximum(img, canvas), img)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)[None], label_map
