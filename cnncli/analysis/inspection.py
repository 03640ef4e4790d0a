"""`cnn inspect`: look inside a network, as chapter 24 of the seed text does.

- kernels: a conv layer's kernels as a grid (colour when the layer reads 3 channels, else one panel per input
  channel on a diverging map centred on zero), optionally each kernel's centred DFT magnitude beside it;
- features: the feature maps of chosen layers for one image, as grids, or reduced by PCA to 3 channels shown as RGB;
- rf: one unit's theoretical receptive field drawn on the image next to the measured one (the magnitude of the
  input gradient of that unit), which is smaller and centre-weighted.
"""

from __future__ import annotations

import difflib
import os

import torch
import torch.nn as nn

from cnncli.analysis.receptive import GLOBAL
from cnncli.errors import UsageError
from cnncli.models._manipulate import no_inplace

MAX_PANELS = 64  # channels shown per layer


def named_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if n}


def find_layer(model: nn.Module, name: str) -> nn.Module:
    layers = named_layers(model)
    if name not in layers:
        close = difflib.get_close_matches(name, list(layers), n=3, cutoff=0.4)
        raise UsageError(
            f"no layer {name!r} in the model",
            ("did you mean " + ", ".join(close) + "? " if close else "") + "see cnn summary for the names",
        )
    return layers[name]


def conv_weight(model: nn.Module, layer: str | None) -> tuple[str, torch.Tensor]:
    """A conv layer's weight [out, in/groups, kh, kw] (the first conv when `layer` is None)."""
    if layer is None:
        found = next(((n, m) for n, m in named_layers(model).items() if isinstance(m, nn.Conv2d)), None)
        if found is None:
            raise UsageError("the model has no Conv2d layer", "cnn inspect kernels shows convolution kernels")
        layer, module = found
    else:
        module = find_layer(model, layer)
        if not isinstance(module, nn.Conv2d):
            convs = [n for n, m in named_layers(model).items() if isinstance(m, nn.Conv2d)][:5]
            raise UsageError(
                f"layer {layer!r} is a {type(module).__name__}, which has no kernels",
                "conv layers: " + ", ".join(convs),
            )
    return layer, module.weight.detach().float().cpu()


def dft_magnitude(kernel: torch.Tensor, size: int = 32) -> torch.Tensor:
    """|DFT| of a 2-D kernel, zero-padded to size x size, zero frequency in the centre."""
    return torch.fft.fftshift(torch.fft.fft2(kernel, s=(size, size)).abs())


def dft_energy_axes(kernel: torch.Tensor) -> tuple[float, float]:
    """Share of a kernel's DFT energy (DC removed) at vertical vs horizontal frequencies: (|v| > |u|, |u| > |v|).
    A kernel that responds to horizontal lines has its energy at vertical frequencies."""
    mag = dft_magnitude(kernel - kernel.mean()) ** 2
    n = mag.shape[0]
    f = torch.arange(n) - n // 2
    v, u = f.view(-1, 1).abs(), f.view(1, -1).abs()
    total = float(mag.sum()) or 1.0
    return float(mag[v > u].sum()) / total, float(mag[u > v].sum()) / total


# ------------------------------------------------------------------------------------------------ features


def feature_maps(model: nn.Module, x: torch.Tensor, layers: list[str] | None) -> dict[str, torch.Tensor]:
    """{layer: its output [C, H, W] for one image}; default: every top-level module that outputs a feature map."""
    no_inplace(model)
    targets = {n: find_layer(model, n) for n in layers} if layers else dict(model.named_children())
    out: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, args, res, n=n: out.__setitem__(n, res)) for n, m in targets.items()]
    try:
        with torch.no_grad():
            model.eval()(x[None])
    finally:
        for h in hooks:
            h.remove()
    maps = {
        n: v[0].detach().float().cpu()
        for n, v in out.items()
        if isinstance(v, torch.Tensor) and v.dim() == 4 and (layers or v.shape[2] * v.shape[3] > 1)
    }  # by default, maps with more than one position
    if layers:
        flat = [n for n in layers if n not in maps]
        if flat:
            raise UsageError(
                f"layer {flat[0]!r} does not output a feature map (C x H x W)",
                "choose conv, pooling or block layers (cnn summary lists them)",
            )
    if not maps:
        raise UsageError("no top-level layer of the model outputs a feature map", "name layers with --layers")
    return maps


def pca_rgb(fmap: torch.Tensor) -> torch.Tensor:
    """[C, H, W] -> [H, W, 3] in 0..1: the 3 principal components of the channel vectors, each stretched to 0..1."""
    c, h, w = fmap.shape
    x = fmap.reshape(c, -1).T
    x = x - x.mean(0)
    if c < 3:
        x = torch.cat([x, torch.zeros(x.shape[0], 3 - c)], 1)
        comps = x
    else:
        _, _, v = torch.linalg.svd(x, full_matrices=False)
        comps = x @ v[:3].T
        if comps.shape[1] < 3:  # fewer positions than 3: fewer components
            comps = torch.cat([comps, torch.zeros(comps.shape[0], 3 - comps.shape[1])], 1)
    lo, hi = comps.amin(0), comps.amax(0)
    return ((comps - lo) / (hi - lo + 1e-12)).reshape(h, w, 3)


# ------------------------------------------------------------------------------------------------ receptive field


def unit_field(model: nn.Module, input_size, layer: str, at: tuple[int, int]) -> dict:
    """The theoretical receptive field of unit `at` of `layer`: its box in input pixels (clipped to the image) and
    its size, stride and centre."""
    from cnncli.analysis.receptive import module_fields

    traced = module_fields(model, tuple(input_size))
    field = traced[0].get(layer) if traced else None
    if field is None:
        raise UsageError(f"cannot compute the receptive field of {layer!r}", "the model could not be traced there")
    if not hasattr(field, "rf"):
        if field is GLOBAL:
            raise UsageError(
                f"{layer!r} has a global receptive field: it pools every position (global pooling, "
                "squeeze-and-excitation, attention), so every pixel reaches each unit",
                "choose an earlier layer; `cnn summary MODEL` lists each layer's field",
            )
        raise UsageError(
            f"{layer!r} has a receptive field the arithmetic does not cover (shifted windows, upsampling...)",
            "cnn summary MODEL shows it measured",
        )
    rf, jump, start = field.rf, field.jump, field.start
    centre = [float(start[a] + at[a] * jump[a]) for a in range(2)]
    box = [[centre[a] - (float(rf[a]) - 1) / 2, centre[a] + (float(rf[a]) - 1) / 2] for a in range(2)]
    return {"receptive_field": [float(v) for v in rf], "jump": [float(v) for v in jump], "centre": centre, "box": box}


def measured_field(model: nn.Module, x: torch.Tensor, layer: str, at: tuple[int, int] | None) -> tuple:
    """|d unit / d input| for the unit `at` (summed over channels) of `layer` on image x [C, H, W]; (map, at, map
    size, note). A default (centre) unit that is inactive on this image gives way to the most active one (said in
    the note); an asked one is a UsageError naming an active one."""
    module = find_layer(no_inplace(model), layer)
    got = {}
    hook = module.register_forward_hook(lambda m, a, r: got.__setitem__("out", r))
    xi = x[None].clone().requires_grad_(True)
    try:
        model.eval()(xi)
    finally:
        hook.remove()
    out = got.get("out")
    if not isinstance(out, torch.Tensor) or out.dim() != 4:
        raise UsageError(f"layer {layer!r} does not output a feature map (C x H x W)", "choose a conv or pooling layer")
    _, _, h, w = out.shape
    asked, note = at, ""
    at = at or (h // 2, w // 2)
    if not (0 <= at[0] < h and 0 <= at[1] < w):
        raise UsageError(f"--at {at[0]},{at[1]} is outside {layer}'s {h}x{w} map", f"use 0..{h - 1},0..{w - 1}")
    strength = out[0].detach().abs().sum(0)  # how active each position is, over its channels
    if float(strength[at]) == 0.0:  # an inactive unit (every channel 0 there): no gradient reaches the input
        best = divmod(int(strength.flatten().argmax()), w)
        if float(strength[best]) == 0.0:
            raise UsageError(f"every unit of {layer} is inactive on this image (all zero)", "choose another --layer")
        if asked is not None:
            raise UsageError(
                f"the unit at {at[0]},{at[1]} of {layer} is inactive on this image (every channel is 0 there, "
                "so no gradient reaches the input)",
                f"try --at {best[0]},{best[1]}, its most active unit",
            )
        note = f"the centre unit {at[0]},{at[1]} is inactive on this image: showing the most active one instead"
        at = best
    out[0, :, at[0], at[1]].sum().backward()
    return xi.grad[0].abs().sum(0).detach(), at, (h, w), note


def default_rf_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The deepest module (in order) that outputs a feature map larger than 1x1."""
    names = {}
    hooks = [
        m.register_forward_hook(lambda mod, a, r, n=n: names.__setitem__(n, r))
        for n, m in named_layers(model).items()
        if not list(m.children())
    ]
    try:
        with torch.no_grad():
            model.eval()(x[None])
    finally:
        for h in hooks:
            h.remove()
    maps = [n for n, r in names.items() if isinstance(r, torch.Tensor) and r.dim() == 4 and r.shape[2] * r.shape[3] > 1]
    if not maps:
        raise UsageError("no layer of the model outputs a spatial feature map", "give --layer")
    return maps[-1]


def central_share(grad: torch.Tensor, box) -> float:
    """Share of the gradient magnitude inside the central half (in each axis) of the theoretical box."""
    (y0, y1), (x0, x1) = box
    cy, cx, hy, hx = (y0 + y1) / 2, (x0 + x1) / 2, (y1 - y0 + 1) / 4, (x1 - x0 + 1) / 4
    h, w = grad.shape
    ys, xs = torch.arange(h).view(-1, 1).float(), torch.arange(w).view(1, -1).float()
    inside = ((ys - cy).abs() <= hy) & ((xs - cx).abs() <= hx)
    total = float(grad.sum()) or 1.0
    return float(grad[inside].sum()) / total


def out_path(folder: str, name: str) -> str:
    """A picture's path in the -o folder (which must be a folder cnn can write in)."""
    from cnncli.fileio import check_output_folder, os_error

    check_output_folder(folder)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise os_error(e, folder) from None
    return os.path.join(folder, name)
