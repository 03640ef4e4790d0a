"""Class activation maps (`cnn inspect cam`): where in an image the evidence for a class lies.

A CAM weighs the feature maps of one layer by how much the class score depends on them. The formulas are those of
pytorch-grad-cam (its `GradCAM`, `GradCAMPlusPlus`, `LayerCAM`, `ScoreCAM`), step for step, so the maps equal its
maps for the same model, layer, class and input (a test compares the two when it is installed):

- gradcam: channel weights = the spatial mean of d score / d map; map = ReLU(sum_c w_c A_c);
- gradcam++: weights from the second and third powers of the gradient (Chattopadhyay et al., eq. 19);
- layercam: map = ReLU(sum_c ReLU(d score / d A_c) * A_c), a weight per position;
- scorecam: no gradient; each channel, upsampled and scaled to 0..1, masks the input, and the class scores of the
  masked inputs (softmax over channels) are the weights.

Each map is then scaled to 0..1 (min-max, as the library does) and resized bilinearly to the model's input.

The target layer is found from the model itself: one forward and backward pass records every layer's output and
the gradient of the class score at it; the target is the last layer (in the order layers finish) whose output is
still a spatial map, C x H x W or tokens on the patch grid, and whose gradient reaches more than one position.
That is resnet's `layer4`, a conv net's `features`, and a ViT's last `norm1`/`ln_1` (after it, the attention has
mixed every token into the class token, and the gradient reaches the class token alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnncli.config import CAM_METHODS as METHODS
from cnncli.errors import UsageError

SCORECAM_BATCH = 16  # masked inputs per forward pass (pytorch-grad-cam's default)
MAX_STRIDE_SKEW = 1.5  # a map's row and column strides may differ by this factor (odd sizes, padding)


@dataclass(frozen=True)
class Layout:
    """How a layer's output lies on the image: `nchw`, `nhwc` (Swin, ConvNeXt blocks), or `tokens` [N, L, D]
    with `prefix` leading tokens (class, distillation) before a `grid` of patch tokens."""

    kind: str
    grid: tuple[int, int]
    prefix: int = 0

    def to_map(self, t: torch.Tensor) -> torch.Tensor:
        """The output as [N, C, H, W] (pytorch-grad-cam's `reshape_transform` for this layer)."""
        if self.kind == "nchw":
            return t
        if self.kind == "nhwc":
            return t.permute(0, 3, 1, 2)
        n, _, d = t.shape
        return t[:, self.prefix :].reshape(n, self.grid[0], self.grid[1], d).permute(0, 3, 1, 2)

    def describe(self) -> str:
        h, w = self.grid
        if self.kind == "tokens":
            extra = f" after {self.prefix} class token{'s' if self.prefix > 1 else ''}" if self.prefix else ""
            return f"tokens on a {h}x{w} patch grid{extra}"
        return f"{h}x{w} map" + (" (channels last)" if self.kind == "nhwc" else "")


def _fits(h: int, w: int, size: tuple[int, int]) -> bool:
    """A map of h x w positions can lie on an image of `size`: a spatial map, no larger than the image, with row
    and column strides alike."""
    if h * w <= 1 or h > size[0] or w > size[1]:
        return False
    sy, sx = size[0] / h, size[1] / w
    return max(sy, sx) / min(sy, sx) <= MAX_STRIDE_SKEW


def layout_of(t, size: tuple[int, int]) -> Layout | None:
    """The spatial layout of a layer's output on an input of `size` (H, W), or None when it has no spatial map."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        return None
    if t.dim() == 4:
        _, a, b, c = t.shape
        if _fits(b, c, size):
            return Layout("nchw", (b, c))
        if _fits(a, b, size):
            return Layout("nhwc", (a, b))
        return None
    if t.dim() == 3:
        tokens = t.shape[1]
        for prefix in range(0, 9):  # class, distillation and register tokens come first
            n = tokens - prefix
            if n < 2:
                break
            gh = max(1, round((n * size[0] / size[1]) ** 0.5))
            for h in (gh, gh - 1, gh + 1):
                if h > 0 and n % h == 0 and _fits(h, n // h, size):
                    return Layout("tokens", (h, n // h), prefix)
    return None


def class_scores(out) -> torch.Tensor:
    """Logits [N, classes] from a model's output: a fully-convolutional model's score map is averaged over its
    positions (the score a global-average-pooled head would give)."""
    if isinstance(out, (tuple, list)):  # inception's aux logits in train mode; the main output first
        out = out[0]
    if out.dim() == 4:
        out = out.mean((2, 3))
    return out.flatten(1)


@dataclass
class Recorded:
    """One forward pass with every layer's output (and first input) kept, and, after `backward`, their
    gradients."""

    order: list[str]  # layer names in the order they finished
    outputs: dict[str, torch.Tensor]
    calls: dict[str, int]
    grads: dict[str, torch.Tensor]
    logits: torch.Tensor
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    input_grads: dict[str, torch.Tensor] = field(default_factory=dict)

    def clear_grads(self) -> None:
        self.grads.clear()
        self.input_grads.clear()

    def release(self) -> None:
        """Drop every kept tensor: the hooks on them refer back to this record, a cycle that would keep a whole
        model's activations and graph alive until the garbage collector runs."""
        self.clear_grads()
        self.outputs.clear()
        self.inputs.clear()
        self.logits = torch.empty(0)


def record(model: nn.Module, x: torch.Tensor, names: list[str] | None = None, inputs: bool = False) -> Recorded:
    """Run `model` on x [N, C, H, W] keeping the outputs of `names` (default: every named layer), with gradient
    hooks on them (and on each layer's first input, with `inputs`)."""
    layers = {n: m for n, m in model.named_modules() if n and (names is None or n in names)}
    rec = Recorded([], {}, {}, {}, torch.empty(0))

    def keep(name):
        def hook(module, args, out):
            rec.calls[name] = rec.calls.get(name, 0) + 1
            rec.order.append(name)
            if isinstance(out, torch.Tensor) and out.requires_grad:
                rec.outputs[name] = out
                out.register_hook(lambda g: rec.grads.__setitem__(name, g))
            first = args[0] if args else None
            if inputs and isinstance(first, torch.Tensor) and first.requires_grad:
                rec.inputs[name] = first
                first.register_hook(lambda g: rec.input_grads.__setitem__(name, g))

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in layers.items()]
    try:
        with torch.enable_grad():
            rec.logits = class_scores(model(x.requires_grad_(True)))
    finally:
        for h in hooks:
            h.remove()
    return rec


def _backward(rec: Recorded, classes: torch.Tensor, retain: bool) -> None:
    rec.clear_grads()
    rec.logits.gather(1, classes.view(-1, 1)).sum().backward(retain_graph=retain)


def _depth(name: str) -> int:
    return name.count(".")


def _reaches(t, grad, size) -> bool:
    """The tensor is a spatial map and the class score's gradient reaches more than one of its positions (in the
    first image)."""
    layout = layout_of(t, size)
    if layout is None or grad is None:
        return False
    return int((layout.to_map(grad.detach()).abs().sum(1)[0] > 0).sum()) > 1


def find_target_layer(model: nn.Module, x: torch.Tensor) -> tuple[str, Layout]:
    """The default target layer for images x (see the module docstring) and its layout; a UsageError when no layer
    qualifies (a model without spatial maps, such as an MLP).

    A layer qualifies when it runs once, its output is a spatial map and the class score's gradient reaches more
    than one position of it. Layers inside a mixing module (one whose input is such a map and whose output is not:
    global pooling, an attention block's attention) are skipped: a ViT's `qkv` is inside the attention, its `norm1`
    before it."""
    size = tuple(x.shape[-2:])
    rec = record(model, x, inputs=True)
    _backward(rec, rec.logits.argmax(1), retain=False)
    once = [n for n in rec.order if rec.calls[n] == 1]
    out_reach = {n: _reaches(rec.outputs.get(n), rec.grads.get(n), size) for n in once}
    mixing = [n for n in once if not out_reach[n] and _reaches(rec.inputs.get(n), rec.input_grads.get(n), size)]
    innermost = [n for n in mixing if not any(o.startswith(n + ".") for o in mixing)]
    found = [n for n in once if out_reach[n] and not any(n.startswith(m + ".") for m in innermost)]
    if not found:
        spatial = [n for n in once if layout_of(rec.outputs.get(n), size) is not None and n in rec.grads]
        if spatial and not any(float(rec.grads[n].abs().max()) > 0 for n in spatial):
            raise UsageError(
                "the class scores do not depend on any layer's output: the head is all zeros, as some "
                "architectures start (random weights?)",
                "give trained weights: --weights or a checkpoint",
            )
        raise UsageError(
            "no layer of the model has a spatial map that the class score depends on",
            "a class activation map needs a convolutional or token layer before global pooling; give --layer",
        )
    out = rec.outputs[found[-1]]
    # the same tensor may leave several nested layers (layer4.1, layer4): the outermost name, as people write it
    same = [n for n in found if rec.outputs.get(n) is out]
    name = min(same, key=lambda n: (_depth(n), rec.order.index(n)))
    layout = layout_of(out, size)
    rec.release()
    return name, layout


def check_layer(model: nn.Module, x: torch.Tensor, name: str) -> Layout:
    """A --layer the user named: it exists, runs once per forward pass and outputs a spatial map."""
    from cnncli.analysis.inspection import find_layer

    module = find_layer(model, name)
    rec = record(model, x[:1], [name])
    calls = rec.calls.get(name, 0)
    if calls != 1:
        raise UsageError(
            f"layer {name!r} runs {calls} times in a forward pass" if calls else f"layer {name!r} does not run",
            "choose a layer that runs once; cnn summary lists them",
        )
    out = rec.outputs.get(name)
    layout = layout_of(out, tuple(x.shape[-2:]))
    rec.release()
    if layout is None:
        shape = "x".join(map(str, out.shape[1:])) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UsageError(
            f"layer {name!r} ({type(module).__name__}, output {shape}) has no spatial map",
            "choose a conv, block or token layer before global pooling, or leave out --layer to have one found",
        )
    return layout


def scale(cam: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Each map [N, h, w] to 0..1 by its minimum and maximum (pytorch-grad-cam's `scale_cam_image`), then resized
    bilinearly to `size`."""
    cam = cam - cam.flatten(1).amin(1).view(-1, 1, 1)
    cam = cam / (1e-7 + cam.flatten(1).amax(1).view(-1, 1, 1))
    if size is not None and tuple(cam.shape[-2:]) != tuple(size):
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return cam


def _weights(method: str, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    if method == "gradcam":
        return grads.mean((2, 3))
    # gradcam++, eq. 19 of arXiv:1710.11063 as pytorch-grad-cam computes it
    g2 = grads**2
    g3 = g2 * grads
    sum_acts = acts.sum((2, 3), keepdim=True)
    aij = g2 / (2 * g2 + sum_acts * g3 + 1e-6)
    aij = torch.where(grads != 0, aij, torch.zeros_like(aij))
    return (grads.clamp(min=0) * aij).sum((2, 3))


def _scorecam_weights(model: nn.Module, x: torch.Tensor, acts: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Score-CAM's channel weights: the class score of the input masked by each upsampled, 0..1-scaled channel."""
    up = F.interpolate(acts, size=x.shape[-2:], mode="bilinear", align_corners=True)
    lo, hi = up.flatten(2).amin(2)[..., None, None], up.flatten(2).amax(2)[..., None, None]
    up = (up - lo) / (hi - lo + 1e-8)
    weights = []
    with torch.no_grad():
        for img, masks, k in zip(x, up, classes):
            scores = [
                class_scores(model(img[None] * masks[i : i + SCORECAM_BATCH, None]))[:, k]
                for i in range(0, masks.shape[0], SCORECAM_BATCH)
            ]
            weights.append(torch.softmax(torch.cat(scores), 0))
    return torch.stack(weights)


def cam_maps(
    model: nn.Module, x: torch.Tensor, layer: str, layout: Layout, classes_per_image: list[list[int]], method: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Maps for each image of x [N, C, H, W] and each of its classes: ([for each rank r, maps [N, H, W] in 0..1 at
    the input size of the r-th class of every image], probabilities [N, classes]). Every image has as many classes."""
    if method not in METHODS:
        raise UsageError(f"unknown CAM method {method!r}", "methods: " + ", ".join(METHODS))
    model.eval()
    rec = record(model, x.detach().clone(), [layer])
    probs = torch.softmax(rec.logits.detach().float(), 1)
    acts = layout.to_map(rec.outputs[layer].detach()).float()
    ranks = len(classes_per_image[0])
    out = []
    for r in range(ranks):
        k = torch.tensor([c[r] for c in classes_per_image], device=x.device)
        if method == "scorecam":
            w = _scorecam_weights(model, x, acts, k)
            cam = (w[..., None, None] * acts).sum(1)
        else:
            _backward(rec, k, retain=r < ranks - 1)
            if layer not in rec.grads:
                raise UsageError(f"no gradient reaches layer {layer!r} from the class score", "choose another --layer")
            grads = layout.to_map(rec.grads[layer].detach()).float()
            if method == "layercam":
                cam = (grads.clamp(min=0) * acts).sum(1)
            else:
                cam = (_weights(method, acts, grads)[..., None, None] * acts).sum(1)
        cam = scale(cam.clamp(min=0), tuple(x.shape[-2:]))
        out.append(scale(cam.clamp(min=0)))  # the library's multi-layer mean over one layer, scaled again
    rec.release()
    return out, probs


def at_image_size(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map [H, W] at the model's input size brought back to the image's own size (bilinear, antialiased when it
    shrinks), in 0..1."""
    if tuple(cam.shape) == tuple(size):
        return cam
    big = F.interpolate(cam[None, None], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
    return big.clamp(0, 1)


def mass_inside(cam: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    """Share of a map's total inside a box (y0, x0, y1, x1), end-exclusive: how much of the heat lies on an object."""
    y0, x0, y1, x1 = box
    total = float(cam.sum())
    return float(cam[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0
