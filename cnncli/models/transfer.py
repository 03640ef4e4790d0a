"""Starting a model from another's weights (`cnn train --weights FILE`), as timm's `--initial-checkpoint` or
`yolo train model=x.pt` do: every tensor whose name and shape fit is loaded; a head sized for other classes is
left as built (re-made); an input convolution for other channels is adapted (timm's `adapt_input_conv`: summed to
one channel, or repeated and rescaled); the rest is skipped. What happened is counted and named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from cnncli.errors import UsageError
from cnncli.models.files import align_keys


@dataclass
class Transfer:
    loaded: list[str] = field(default_factory=list)
    remade: list[str] = field(default_factory=list)  # in the model, other shape in the file: left as built
    adapted: list[str] = field(default_factory=list)  # the input convolution, converted to the model's channels
    missing: list[str] = field(default_factory=list)  # in the model, not in the file: left as built
    unused: list[str] = field(default_factory=list)  # in the file, not in the model
    prefix: str = ""

    def summary(self) -> str:
        def named(items):
            return f" ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})" if items else ""

        parts = [f"loaded {len(self.loaded)} tensors", f"re-made {len(self.remade)}{named(self.remade)}"]
        if self.adapted:
            parts.append(f"adapted {len(self.adapted)}{named(self.adapted)}")
        parts.append(f"skipped {len(self.missing) + len(self.unused)}{named(self.missing + self.unused)}")
        return ", ".join(parts)


def adapt_input_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first-conv weight [out, c, k, k] for `channels` input channels, keeping the response to a grey image."""
    have = weight.shape[1]
    if channels == 1:
        return weight.sum(1, keepdim=True)
    repeat = -(-channels // have)
    return weight.repeat(1, repeat, 1, 1)[:, :channels] * (have / channels)


def transfer_weights(model: nn.Module, state: dict, what: str = "the weights") -> Transfer:
    """Load what fits of `state` into `model` (see the module docstring); UsageError when nothing fits."""
    target = model.state_dict()
    aligned, prefix = align_keys(state, target)
    out = Transfer(prefix=prefix)
    new = {}
    first_conv = next((k for k, v in target.items() if v.dim() == 4), None)
    for key, t in target.items():
        v = aligned.get(key)
        if v is None:
            out.missing.append(key)
        elif tuple(v.shape) == tuple(t.shape):
            new[key] = v.to(t.dtype)
            out.loaded.append(key)
        elif key == first_conv and v.dim() == 4 and v.shape[0] == t.shape[0] and v.shape[2:] == t.shape[2:]:
            new[key] = adapt_input_conv(v.float(), t.shape[1]).to(t.dtype)
            out.adapted.append(f"{key}: {v.shape[1]} -> {t.shape[1]} channels")
        else:
            out.remade.append(key)
    out.unused = [k for k in aligned if k not in target]
    if not new:
        raise UsageError(
            f"no tensor of {what} fits the model (names or shapes all differ)",
            "is it the weights of the same architecture?",
        )
    model.load_state_dict(new, strict=False)
    return out
