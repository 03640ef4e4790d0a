"""Measured fields, for the layers the rules cannot compute: the extent of the input gradient of a centre unit."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn

from cnncli.analysis.receptive.layout import SPATIAL
from cnncli.models._manipulate import no_inplace


def centre_unit(out: torch.Tensor, layout: tuple | None, step: int = 0) -> torch.Tensor | None:
    """The centre unit of a module output (summed over its features; `step` cells down and right of the centre), for
    the layouts a map can have: NCHW, NHWC, or tokens (N, positions, C); None for other outputs."""
    lay = layout or (("n", "c", "h", "w") if out.dim() == 4 else None)
    if lay is None or len(lay) != out.dim():
        return None
    index: list = []
    for lab, size in zip(lay, out.shape):
        if lab == "n":
            index.append(0)
        elif lab == "s":  # tokens: the centre of a square map, after a class token if there is one
            index.append(_centre_token(size))
        elif lab in SPATIAL or lab == "1":
            index.append(min(size // 2 + (step if lab in ("h", "w") else 0), size - 1))
        else:
            index.append(slice(None))
    if not any(v in SPATIAL or v == "1" for v in lay):
        return out[0].sum()  # a vector per image (logits): every element has the same field
    return out[tuple(index)].sum()


def _centre_token(n: int) -> int:
    for extra in (0, 1, 2):  # no token, a class token, class and distillation tokens ahead of the map
        side = math.isqrt(n - extra)
        if side * side == n - extra and side > 0:
            return extra + (side // 2) * side + side // 2
    return n // 2


class _Enough(Exception):
    pass


def _outputs_of(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """The outputs of the named modules on `x`; the forward pass stops once every one of them has run."""
    modules = dict(model.named_modules())
    wanted = [n for n in names if n in modules]
    outs: dict[str, torch.Tensor] = {}

    def hook(r, n):
        outs[n] = r
        if all(k in outs for k in wanted):
            raise _Enough

    hooks = [modules[n].register_forward_hook(lambda m, a, r, n=n: hook(r, n)) for n in wanted]
    try:
        model(x)
    except _Enough:
        pass
    finally:
        for h in hooks:
            h.remove()
    return outs


def measure_fields(
    model: nn.Module,
    input_size: tuple[int, int, int],
    names: list[str],
    layouts: dict | None = None,
    dtype: torch.dtype = torch.float64,
    jumps: bool = False,
    copy_model: bool = True,
    whole: bool = False,
) -> dict[str, dict]:
    """Measure the field of the centre unit of each named module's output: the extent of the input gradient, on a
    random input in `dtype` (float64 so that small contributions do not underflow to zero). The forward pass stops
    once every named module has run.

    {name: {"receptive_field": [h, w], "clipped": [h, w] (the gradient reached the image border on that axis, so the
    field may be larger), "whole": (with `whole`) bool: the centre unit reads every row and column that all the
    module's units together read (a global operation; a network may leave the last rows of an image unread), "jump":
    [h, w] (with `jumps`: how far the field moves from the centre unit to its lower-right neighbour; None where it
    cannot be seen)}}."""
    layouts = layouts or {}
    work = no_inplace((copy.deepcopy(model) if copy_model else model).to(dtype=dtype).eval())
    opened = open_closed_branches(work)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, *input_size, generator=gen, dtype=dtype).requires_grad_(True)
    result = {}
    for name, out in _outputs_of(work, x, names).items():
        if isinstance(out, torch.Tensor) and out.requires_grad:
            lay = layouts.get(name) or (("n", "c", "h", "w") if out.dim() == 4 else ("n",) + ("c",) * (out.dim() - 1))
            got = _measure_one(out, x, lay, jumps, whole)
            if got is not None:
                result[name] = {**got, "opened_scales": opened}
    return {n: result[n] for n in names if n in result}


def open_closed_branches(model: nn.Module) -> int:
    """Set to 1 the all-zero scales that close a branch at initialisation, on the measuring copy: zero-initialised
    BatchNorm/LayerNorm/GroupNorm weights at the end of residual branches (torchvision's zero_init_residual, timm's
    zero_init_last), LayerScale gammas, ConvNeXt-V2's GRN weights. With them at zero the input gradient flows
    through the identity alone and a measured field is that of the shortcut (efficientvit_m0's stages.0 read 31
    where the field is the whole image). The field is a property of the architecture, not of the weights' values.
    Returns how many tensors were opened."""
    n = 0
    with torch.no_grad():
        for mod in model.modules():
            kind = type(mod).__name__.lower()
            norm_or_scale = isinstance(mod, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)) or any(
                k in kind for k in ("norm", "scale", "grn")
            )
            for pname, p in mod.named_parameters(recurse=False):
                if p.is_meta or not p.is_floating_point() or p.numel() == 0 or bool(p.any()):
                    continue
                if (
                    (norm_or_scale and pname in ("weight", "gamma", "scale"))
                    or "gamma" in pname
                    or "layer_scale" in pname
                ):
                    p.fill_(1.0)
                    n += 1
    return n


def _measure_one(out: torch.Tensor, x: torch.Tensor, lay: tuple, jumps: bool, whole: bool) -> dict | None:
    ext = _extent(out, x, lay, 0)
    if ext is None:
        return None
    h, w = x.shape[2:]
    (r0, r1), (c0, c1) = ext
    clipped = [r0 == 0 or r1 == h - 1, c0 == 0 or c1 == w - 1]
    got = {"receptive_field": [r1 - r0 + 1, c1 - c0 + 1], "clipped": clipped, "whole": None, "jump": None}
    if whole:
        got["whole"] = _extent(out, x, None, 0) == ext  # what all the module's units together read
    if jumps and "h" in lay and "w" in lay:
        nxt = _extent(out, x, lay, 1)
        if nxt is not None:
            got["jump"] = [
                None if clipped[0] or nxt[0][1] == h - 1 else nxt[0][0] - r0,
                None if clipped[1] or nxt[1][1] == w - 1 else nxt[1][0] - c0,
            ]
    return got


def _extent(out: torch.Tensor, x: torch.Tensor, layout, step: int):
    unit = centre_unit(out, layout, step) if layout is not None else out.sum()
    if unit is None:
        return None
    (grad,) = torch.autograd.grad(unit, x, retain_graph=True, allow_unused=True)
    if grad is None:
        return None
    mask = grad.detach().abs().sum(dim=(0, 1)) != 0
    rows, cols = mask.any(dim=1).nonzero(), mask.any(dim=0).nonzero()
    if len(rows) == 0:
        return None
    return (int(rows[0]), int(rows[-1])), (int(cols[0]), int(cols[-1]))
