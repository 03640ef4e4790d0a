"""Changing a built model in place or as a copy (timm `_manipulate.py` style): its first convolution's channels, a
weightless twin on the meta device, in-place activations turned off."""

from __future__ import annotations

import contextlib
import copy
import functools

import torch
import torch.nn as nn

from cnncli.errors import UsageError


def adapt_in_channels(model, in_channels: int):
    """Replace the first Conv2d so the model takes `in_channels` channels."""
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(
                    parent,
                    child_name,
                    nn.Conv2d(
                        in_channels,
                        child.out_channels,
                        child.kernel_size,
                        child.stride,
                        child.padding,
                        child.dilation,
                        1 if child.groups == 1 else in_channels,
                        child.bias is not None,
                    ),
                )
                return model
    raise UsageError("cannot adapt the model to the input channels", "it has no Conv2d layer")


def meta_twin(model: nn.Module) -> nn.Module | None:
    """A copy of `model` whose tensors live on the meta device (None when it cannot be made)."""
    if any(p.device.type == "meta" for p in model.parameters()):
        return model
    try:
        memo = {
            id(t): (
                nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
                if isinstance(t, nn.Parameter)
                else torch.empty_like(t, device="meta")
            )
            for t in [*model.parameters(), *model.buffers()]
        }  # no data is copied
        return copy.deepcopy(model, memo)
    except Exception:
        return None


def no_inplace(model: nn.Module) -> nn.Module:
    """In-place activations would overwrite the outputs a hook keeps (and the graph a gradient needs)."""
    for m in model.modules():
        if getattr(m, "inplace", False) is True:
            m.inplace = False
    return model


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Conv+BatchNorm pairs folded into one conv (eval mode), via torch.fx; the model itself if untraceable."""
    from torch.fx.experimental.optimization import fuse

    try:
        return fuse(model.eval(), inplace=False)
    except Exception:
        return model.eval()


@contextlib.contextmanager
def shapes_only_normalization():
    """While a model runs on the meta device to learn shapes, operations or multiply-adds: its normalization layers
    (BatchNorm, LayerNorm, GroupNorm, InstanceNorm) return an empty tensor like their input, which is all a meta
    tensor can say about their output, instead of running their decomposition in Python (a third of such a pass's
    time on BatchNorm-heavy models; they have no multiply-adds to count). Tensors on any other device are untouched."""
    import torch.nn.functional as F

    names = ("batch_norm", "layer_norm", "group_norm", "instance_norm")
    saved = {n: getattr(F, n) for n in names}

    def shaped(original):
        @functools.wraps(original)
        def norm(input, *args, **kwargs):
            if isinstance(input, torch.Tensor) and input.device.type == "meta":
                return torch.empty_like(input)
            return original(input, *args, **kwargs)

        return norm

    for n, f in saved.items():
        setattr(F, n, shaped(f))
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(F, n, f)
