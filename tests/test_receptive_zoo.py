"""Computed receptive fields against measured ones, over the whole torchvision classification zoo and the builtins.

For every top-level stage (a top-level module, or each child of a top-level Sequential such as `features`), the field
and jump `cnn summary` computes are compared with the extent of the input gradient of the stage's centre unit, on a
random float64 input large enough that the field does not reach the border (layer-scale parameters set to 1 so that
nothing underflows). A stage computed as global must read every row and column that all its units together read (max pooling passes
gradients to its maxima only, so single pixels may be missed; squeezenet's stem leaves the last row unread); there the earliest module computed
global inside it is measured (anything computed from a global value is global), so the forward pass can stop early.

Measuring is the expensive half: the input must be larger than the largest field (convnext_base's last stage sees
3,416 pixels). Each axis is measured on its own strip (e.g. 3,500 x 64), and a stage whose strip would cost more than
BUDGET multiply-adds is left to the full run: `CNN_RF_FULL=1 python -m pytest tests/test_receptive_zoo.py`.
"""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.nn as nn
import torchvision

from cnncli.analysis import receptive as R
from cnncli.analysis.arith import Field

FULL = os.environ.get("CNN_RF_FULL") == "1"
BUDGET = float("inf") if FULL else 2.5e8  # multiply-adds of one model's measuring passes (float64, 2 cores: ~0.25 s)

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
BUILTIN = ["lenet5", "linenet", "resnet18", "resnet20", "smallcnn", "vgg11_bn"]  # at 32x32: the CIFAR layouts


def _build(name: str, size: int) -> nn.Module:
    from cnncli.models._factory import no_initialisation
    from cnncli.models.detect import _parameters_on_meta

    def make():
        if name.startswith("timm:"):
            import timm

            try:  # transformers are built for one image size
                return timm.create_model(name[len("timm:") :], pretrained=False, img_size=size)
            except TypeError:
                return timm.create_model(name[len("timm:") :], pretrained=False)
        if name.startswith("builtin:"):
            from cnncli.models._factory import get_model

            return get_model(name[len("builtin:") :], image_size=(size, size))
        kw = {"image_size": size} if name.startswith("vit_") else {}
        return torchvision.models.get_model(name, weights=None, **kw)

    with warnings.catch_warnings(), no_initialisation():  # the weights are set by _materialize, or never used
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return make().eval()
        except (NotImplementedError, RuntimeError):  # a builder computing widths with tensors (regnet)
            with _parameters_on_meta():
                return make().eval()


def _stages(model: nn.Module) -> list[str]:
    """Top-level modules with parameters; a model that is a body and a head (`features` + `classifier`, `stem` +
    `trunk_output` + `fc`) is split into the children of its Sequential body."""
    tops = [(n, c) for n, c in model.named_children() if any(True for _ in c.parameters())]
    out = []
    for name, child in tops:
        kids = [(f"{name}.{n}", c) for n, c in child.named_children() if any(True for _ in c.parameters())]
        if len(tops) <= 3 and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(kids) > 1:
            out.extend(n for n, _ in kids)
        else:
            out.append(name)
    return out


MACS: dict[tuple[str, int], int] = {}  # (model, input side): total multiply-adds, counted once per model


def _prefix_macs(name: str, model: nn.Module, size: tuple[int, int], names: list[str]) -> dict[str, float]:
    """Multiply-adds per input pixel of the forward pass up to each module in `names`, counted on the meta device
    (the whole pass's total is kept for test_macs_match_torchvision_ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cnncli.models._manipulate import shapes_only_normalization

    got: dict[str, float] = {}
    modules = dict(model.named_modules())
    with FlopCounterMode(display=False) as fc, shapes_only_normalization():

        def seen(n):  # a forward hook's return value would replace the output: return nothing
            got.setdefault(n, fc.get_total_flops() / 2 / (size[0] * size[1]))

        hooks = [modules[n].register_forward_hook(lambda *_, n=n: seen(n)) for n in names]
        in_ch = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
        try:
            model(torch.zeros(1, in_ch, *size, device="meta"))
        finally:
            for h in hooks:
                h.remove()
    if size[0] == size[1]:
        MACS[(name, size[0])] = fc.get_total_flops() // 2
    return got


def _materialize(model: nn.Module) -> nn.Module:
    """Real float64 weights for each module as it is about to run; the modules a pass never reaches (after the
    measured stage, where it stops) stay on the meta device and cost nothing."""
    gen = torch.Generator().manual_seed(0)

    def fill(module, *_):
        # torch.nn's own modules may use their children's weights directly (MultiheadAttention's out_proj)
        builtin = type(module).__module__.startswith("torch.nn") and not isinstance(
            module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
        )
        for m in module.modules() if builtin else [module]:
            fill_own(m)

    def fill_own(m):
        for pname, p in list(m.named_parameters(recurse=False)):
            if p.device.type != "meta":
                continue
            t = torch.empty(p.shape, dtype=torch.float64)
            if "layer_scale" in pname or pname == "gamma":
                t.fill_(1.0)  # torchvision's CNBlock starts at 1e-6: products of those underflow
            elif p.dim() >= 2:
                t.normal_(0, 1 / math.sqrt(math.prod(p.shape[1:])), generator=gen)
            elif pname == "weight":
                t.uniform_(0.5, 1.5, generator=gen)
            else:
                t.normal_(0, 0.1, generator=gen)
            setattr(m, pname, nn.Parameter(t, requires_grad=False))
        for bname, b in list(m.named_buffers(recurse=False)):
            if b is not None and b.device.type == "meta":
                m._buffers[bname] = (
                    torch.ones(b.shape, dtype=torch.float64)
                    if "var" in bname
                    else torch.zeros(b.shape, dtype=b.dtype if not b.is_floating_point() else torch.float64)
                )

    for m in model.modules():
        m.register_forward_pre_hook(fill)
    return model


def check_zoo_model(name: str, base: int) -> dict:
    """Compare computed and measured fields of every stage of one model; returns what was measured."""
    model = _build(name, base)
    in_ch = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).in_channels
    fields = R.model_fields(model, (in_ch, base, base), device="meta")
    assert fields is not None, f"{name} cannot be traced"
    stages = _stages(model)
    finite = {s: fields.per_module[s] for s in stages if isinstance(fields.per_module.get(s), Field)}
    order = [n for n, _ in model.named_modules()]
    # the first module computed global: measure it (later stages depend on it, so they are global too)
    first_global = next((n for n in order if fields.per_module.get(n) is R.GLOBAL), None)
    while first_global is not None:  # a container is global through one of its children: go down to the first
        child = next(
            (n for n in order if n.startswith(first_global + ".") and fields.per_module.get(n) is R.GLOBAL), None
        )
        if child is None:
            break
        first_global = child
    checked = {}
    kept: list[nn.Module] = []

    def runnable() -> nn.Module:
        """One model with real weights for every measuring pass (it runs at any size)."""
        if not kept:
            kept.append(_materialize(_build(name, base)))
        return kept[0]

    # vision transformers take the square image they were built for (any multiple of their patch: built small)
    square = name.startswith("vit_") or any(
        "patch_embed" in n or type(m).__name__ == "PatchEmbed" for n, m in model.named_modules()
    )  # mixer and resmlp cut their patches in a `stem` that is timm's PatchEmbed
    step = next(m for m in model.modules() if isinstance(m, nn.Conv2d)).stride[0] if square else 32
    short = -(-64 // step) * step if square else max(64, base // 2 if base >= 128 else base)

    def long_side(f: Field, axis: int) -> int:
        """Long enough for the field and a few jumps either side of the centre unit."""
        n = int(f.rf[axis] + 4 * f.jump[axis] + 2 * abs(float(f.start[axis]))) + 1
        return max(-(-n // step) * step, short)

    per_pixel = _prefix_macs(name, model, (base, base), list(finite) + ([first_global] if first_global else []))
    # a container the model loops over itself (fastvit's `stages`) never runs as a module: nothing to hook
    finite = {s: f for s, f in finite.items() if s in per_pixel}
    first_global = first_global if first_global in per_pixel else None

    def first_global_fits(stage) -> bool:
        s = short if square else base
        return bool(stage) and per_pixel[stage] * s * s <= BUDGET

    for axis in (0, 1):
        # one pass per axis on a strip sized for the last stage within the budget; one backward per stage
        # cost: the forward pass to the last stage, and two backward passes (centre unit, neighbour) per stage
        todo, size, backward = [], None, 0.0
        for stage, f in finite.items():
            long = max(long_side(f, axis), size[axis] if size else 0)
            want = (long, long) if square else (long, short) if axis == 0 else (short, long)
            over = (per_pixel[stage] + 2 * (backward + per_pixel[stage])) * want[0] * want[1] > BUDGET
            if over and (todo or axis == 1 or first_global_fits(first_global)):
                break  # within the budget; a model whose every stage is over it still checks its first, once
            todo.append(stage)
            size, backward = want, backward + per_pixel[stage]
        if not todo:
            continue
        m = _materialize(_build(name, size[0])) if square else runnable()
        got = R.measure_fields(m, (in_ch, *size), todo, fields.layouts, jumps=True, copy_model=False)
        for stage in todo:
            rf, jump, g = finite[stage].receptive_field, finite[stage].jump_value, got[stage]
            assert not g["clipped"][axis], (name, stage, axis, size, g)
            assert g["receptive_field"][axis] == rf[axis], (name, stage, axis, g, rf)
            lay = fields.layouts.get(stage) or ()
            if "h" in lay and "w" in lay:  # tokens (a ViT's patch embedding) have no neighbour to step to
                assert g["jump"][axis] == jump[axis], (name, stage, axis, g, jump)
            checked[(stage, axis)] = (rf[axis], jump[axis])
    size = short if square else base
    if first_global and per_pixel[first_global] * size * size <= BUDGET:
        m = _materialize(_build(name, size)) if square else runnable()
        got = R.measure_fields(m, (in_ch, size, size), [first_global], fields.layouts, copy_model=False, whole=True)
        assert got[first_global]["whole"], (name, first_global, got)
        checked[(first_global, "global")] = True
    return checked


ZOO = [(n, 299 if n.startswith("inception") else 224) for n in TORCHVISION] + [("builtin:" + n, 32) for n in BUILTIN]


# timm (not a dependency): a model of each family kind the zoo has, when timm is installed
TIMM = [
    "resnet50d",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_100",
    "regnety_002",
    "vit_tiny_patch16_224",
    "deit_tiny_patch16_224",
    "swin_tiny_patch4_window7_224",
    "resnest14d",
    "densenet121",
    "repvgg_a0",
    "mixnet_s",
    "ghostnet_100",
    "levit_128s",
    "coat_lite_tiny",
]
TIMM_QUICK = ["resnet50d", "convnext_atto", "efficientnet_b0", "vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"]
TIMM_QUICK += ["repvgg_a0", "ghostnet_100", "levit_128s"]  # the rest with CNN_RF_FULL=1 (the suite's time)
try:
    import timm  # noqa: F401

    ZOO += [("timm:" + n, 224) for n in (TIMM if FULL else TIMM_QUICK)]
except ImportError:
    pass


@pytest.mark.parametrize("name,base", ZOO, ids=[n for n, _ in ZOO])
def test_computed_field_is_the_measured_one(name, base):
    checked = check_zoo_model(name, base)
    assert checked, f"nothing of {name} was measured"
    if os.environ.get("CNN_RF_VERBOSE"):
        print(name, checked)


# ------------------------------------------------------------------------------------------------ multiply-adds


def _published_ops():
    """(name, weights, crop, GMACs) for each model's default weights (the others differ by crop size only)."""
    out = []
    for name in TORCHVISION:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if "_ops" in weights.meta:
            out.append((name, str(weights).split(".")[-1], weights.transforms().crop_size[0], weights.meta["_ops"]))
    return out


OPS = _published_ops()


@pytest.mark.parametrize("name,weights,crop,gops", OPS, ids=[f"{n}-{w}" for n, w, _, _ in OPS])
def test_macs_match_torchvision_ops(name, weights, crop, gops):
    """Total multiply-adds at the weights' crop size against the `_ops` torchvision publishes with them (GMACs, to
    3 decimals: within 1%, or within the rounding of the published figure)."""
    from cnncli.analysis.summary import module_macs

    total = MACS.get((name, crop))  # counted by the fields test when it ran at this size
    if total is None:
        _, total = module_macs(_build(name, crop), (3, crop, crop), "meta")
    assert abs(total / 1e9 - gops) <= max(0.01 * gops, 0.0005), (total / 1e9, gops)


def test_swin_fields_are_measured_and_said_to_be():
    """Shifted windows are not a sliding window: their fields are measured, labelled, and grow stage by stage;
    the pooled output is global."""
    from cnncli.analysis.summary import summarize

    model = torchvision.models.swin_t().eval()
    res = summarize(model, (3, 224, 224), depth=2).as_json()
    rows = {r["name"]: r for r in res["layers"]}
    assert rows["features.0"]["receptive_field"] == [4, 4] and rows["features.0"]["receptive_field_kind"] == "exact"
    stage1 = rows["features.1"]
    assert stage1["receptive_field_kind"] == "measured"
    # two blocks of 7x7-patch windows, the second shifted by 3 patches: 14 patches of 4 pixels
    assert stage1["receptive_field"] == [56, 56] and stage1["jump"] == [4, 4]
    assert rows["features.3"]["receptive_field"][0] > 56
    assert rows["avgpool"]["receptive_field"] == "global" and res["receptive_field"] == "global"


def test_an_operation_is_added_by_registering_one_rule():
    """The rules are a table: a module no rule covers is UNKNOWN (measured), and one decorated function makes it
    computed, for the module and every subclass of it; the walk never names an operation itself."""
    from cnncli.analysis.receptive import rules

    class Blur(nn.Module):  # a 3x3 box filter written as a module the rules have never seen
        def forward(self, x):
            return nn.functional.avg_pool2d(x, 3, 1, 1)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.blur = Blur()

        def forward(self, x):
            return self.blur(self.conv(x))

    class Leaf(torch.fx.Tracer):  # keep Blur as one call_module node, as a custom kernel would be
        def is_leaf_module(self, m, name):
            return isinstance(m, Blur) or super().is_leaf_module(m, name)

    def fields():
        net = Net().eval()
        graph = Leaf().trace(net)
        gm = torch.fx.GraphModule(net, graph)
        from torch.fx.passes.shape_prop import ShapeProp

        ShapeProp(gm).propagate(torch.zeros(1, 3, 16, 16))
        return {n.name: i.field for n, i in R.node_infos(gm).items()}

    assert fields()["blur"] is R.UNKNOWN
    R.module_rule(Blur)(lambda c: R.Info(c.f.through((3, 3), (1, 1), (1, 1)), c.lay))
    try:
        got = fields()["blur"]
    finally:
        del rules.MODULE_RULES[Blur]
    assert isinstance(got, Field) and got.rf == (5, 5) and fields()["blur"] is R.UNKNOWN
