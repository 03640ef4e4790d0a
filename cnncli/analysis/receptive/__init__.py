"""Receptive field, jump and offset of every layer of a torch model, traced with torch.fx.

- `layout`: what each graph value carries: a field (a `Field`, GLOBAL, UNKNOWN) and a layout naming its dimensions.
- `rules`: one registered rule per operation (`@module_rule(nn.Conv2d)`, `@function_rule(F.pad, "pad")`).
- `graph`: trace the model, walk its graph once by the rules, read the fields back per module.
- `measure`: the extent of the input gradient, for the layers no rule covers.

Sliding windows (convolutions, pooling) advance the field with the arithmetic of `cnn shape`; padding and cropping
move its offset. Operations on features only keep it (activations, normalisation over channels, a Linear per
position, layer scale, dropout, reshapes and permutes that keep the image axes apart). Element-wise merges take the
union of their inputs' windows. Operations that mix every position make it GLOBAL (a global pool, a mean over the
image axes, squeeze-and-excitation, self-attention, a Linear over a flattened map, GroupNorm's statistics), and
anything computed from a global value is global. An operation without a rule makes it UNKNOWN: `cnn summary`
measures those layers instead, and says so.
"""

from cnncli.analysis.receptive.graph import Fields, model_fields, module_fields, node_infos, trace
from cnncli.analysis.receptive.layout import GLOBAL, UNKNOWN, Info, join
from cnncli.analysis.receptive.measure import centre_unit, measure_fields
from cnncli.analysis.receptive.rules import function_rule, module_rule

__all__ = [
    "GLOBAL",
    "UNKNOWN",
    "Info",
    "Fields",
    "trace",
    "join",
    "node_infos",
    "model_fields",
    "module_fields",
    "measure_fields",
    "centre_unit",
    "module_rule",
    "function_rule",
]
