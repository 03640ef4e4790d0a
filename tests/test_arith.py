"""conv/pool arithmetic against torch.nn, by property test over random configurations."""

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnncli.analysis import arith
from cnncli.errors import ArithError, UsageError

SETTINGS = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
small = st.integers(1, 5)
pair = st.tuples(small, small)


def _torch_out(module, c, h, w):
    with torch.no_grad():
        return tuple(module(torch.zeros(1, c, h, w)).shape[1:])


def _torch_rejects(make_and_run) -> None:
    """torch either raises or produces an empty output for a configuration arith calls impossible."""
    try:
        shape = make_and_run()
    except (RuntimeError, ValueError):
        return
    assert min(shape) < 1, f"torch accepted it with output {shape}"


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@SETTINGS
@given(
    c=st.integers(1, 4),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    k=pair,
    s=pair,
    p=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    d=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    out_mult=st.integers(1, 3),
    groups=st.sampled_from([1, 2, 3, 4]),
    bias=st.booleans(),
)
def test_conv2d_matches_torch(c, h, w, k, s, p, d, out_mult, groups, bias):
    out = groups * out_mult
    try:
        layer = arith.conv2d(
            (c, h, w), out_channels=out, kernel=k, stride=s, padding=p, dilation=d, groups=groups, bias=bias
        )
    except ArithError:
        with pytest.raises((RuntimeError, ValueError)):
            m = nn.Conv2d(c, out, k, s, p, d, groups, bias)
            _torch_out(m, c, h, w)
        return
    m = nn.Conv2d(c, out, k, s, p, d, groups, bias)
    assert layer.output == _torch_out(m, c, h, w)
    assert layer.params == _nparams(m)


@settings(max_examples=300, deadline=None)
@given(
    c=st.integers(1, 3),
    h=st.integers(1, 20),
    w=st.integers(1, 20),
    k=pair,
    d=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    out=st.integers(1, 4),
)
def test_conv2d_same_and_valid(c, h, w, k, d, out):
    for mode in ("same", "valid"):
        try:
            layer = arith.conv2d((c, h, w), out_channels=out, kernel=k, padding=mode, dilation=d)
        except ArithError:
            with pytest.raises((RuntimeError, ValueError)):
                _torch_out(nn.Conv2d(c, out, k, 1, mode, d), c, h, w)
            continue
        assert layer.output == _torch_out(nn.Conv2d(c, out, k, 1, mode, d), c, h, w)


@SETTINGS
@given(
    c=st.integers(1, 3),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    k=pair,
    s=st.one_of(st.none(), pair),
    p=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    d=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    ceil=st.booleans(),
    kind=st.sampled_from(["max", "avg"]),
)
def test_pool2d_matches_torch(c, h, w, k, s, p, d, ceil, kind):
    if kind == "avg":
        d = (1, 1)
    try:
        layer = arith.pool2d((c, h, w), kind=kind, kernel=k, stride=s, padding=p, dilation=d, ceil_mode=ceil)
    except ArithError:
        with pytest.raises((RuntimeError, ValueError)):
            m = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil) if kind == "max" else nn.AvgPool2d(k, s, p, ceil_mode=ceil)
            _torch_out(m, c, h, w)
        return
    m = nn.MaxPool2d(k, s, p, d, ceil_mode=ceil) if kind == "max" else nn.AvgPool2d(k, s, p, ceil_mode=ceil)
    assert layer.output == _torch_out(m, c, h, w)
    for line, size in zip(layer.formulas, layer.output[1:] if len(layer.formulas) == 2 else layer.output[1:2]):
        _check_formula(line, size)


def _check_formula(line: str, size: int) -> None:
    """A printed formula evaluates to what it says, and ends on the layer's output size (with ceil_mode's
    last-window rule written out where it changes the result)."""
    import math
    import re

    expr, _, rest = line.split(": ", 1)[1].partition(" = ")
    value = eval(expr, {"ceil": math.ceil, "floor": math.floor})  # noqa: S307 (the tool's own formula text)
    stated = int(re.match(r"\d+", rest).group())
    assert value == stated, line
    final = int(re.search(r"so (\d+)$", rest).group(1)) if "less the last window" in rest else stated
    assert final == size, line


@SETTINGS
@given(
    c=st.integers(1, 4),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    k=pair,
    s=pair,
    p=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    d=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    op=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    out_mult=st.integers(1, 3),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
)
def test_conv_transpose2d_matches_torch(c, h, w, k, s, p, d, op, out_mult, groups, bias):
    out = groups * out_mult
    try:
        layer = arith.conv_transpose2d(
            (c, h, w),
            out_channels=out,
            kernel=k,
            stride=s,
            padding=p,
            dilation=d,
            output_padding=op,
            groups=groups,
            bias=bias,
        )
    except ArithError:
        _torch_rejects(lambda: _torch_out(nn.ConvTranspose2d(c, out, k, s, p, op, groups, bias, d), c, h, w))
        return
    m = nn.ConvTranspose2d(c, out, k, s, p, op, groups, bias, d)
    assert layer.output == _torch_out(m, c, h, w)
    assert layer.params == _nparams(m)


@SETTINGS
@given(n=st.integers(1, 300), out=st.integers(1, 50), bias=st.booleans())
def test_linear_matches_torch(n, out, bias):
    layer = arith.linear((n,), out_features=out, bias=bias)
    assert layer.params == _nparams(nn.Linear(n, out, bias))
    assert layer.output == (out,)


def test_single_conv_example_from_issue():
    layer = arith.conv2d((3, 32, 32), out_channels=10, kernel=5, stride=1, padding=2)
    assert layer.output == (10, 32, 32)
    assert layer.params == 760
    assert layer.macs == 32 * 32 * 10 * 5 * 5 * 3
    assert "floor((32 + 2*2 - 1*(5-1) - 1) / 1) + 1 = 32" in layer.formulas[0]


def test_lenet_stack_classic_numbers():
    rows = arith.run_layers(
        (1, 32, 32), "conv(6,k=5) relu maxpool(2) conv(16,k=5) maxpool(2) flatten fc(120) fc(84) fc(10)"
    )
    # LeNet-5 (LeCun et al. 1998 layout with a full C3): 156 + 2,416 + 48,120 + 10,164 + 850
    assert [r.output for r in rows] == [
        (6, 28, 28),
        (6, 28, 28),
        (6, 14, 14),
        (16, 10, 10),
        (16, 5, 5),
        (400,),
        (120,),
        (84,),
        (10,),
    ]
    assert [r.params for r in rows] == [156, 0, 0, 2416, 0, 0, 48120, 10164, 850]
    assert arith.totals(rows)["params"] == 61706
    assert [r.receptive_field for r in rows][-1] == (32, 32)
    assert [r.jump for r in rows][4] == (4, 4)


def _torch_stack(spec_rows, c):
    layers = []
    for r in spec_rows:
        a = r.args
        if r.op == "conv":
            layers.append(nn.Conv2d(c, int(a["out"]), int(a.get("k", 3)), int(a.get("s", 1)), int(a.get("p", 0))))
            c = int(a["out"])
        elif r.op == "maxpool":
            layers.append(nn.MaxPool2d(int(a.get("k", 2))))
        elif r.op == "avgpool":
            layers.append(nn.AvgPool2d(int(a.get("k", 2))))
        elif r.op == "bn":
            layers.append(nn.BatchNorm2d(c))
        elif r.op == "act":
            layers.append(nn.ReLU())
        elif r.op == "flatten":
            layers.append(nn.Flatten())
        elif r.op == "fc":
            layers.append(nn.LazyLinear(int(a["out"])))
        elif r.op == "gap":
            layers.append(nn.AdaptiveAvgPool2d(1))
    return nn.Sequential(*layers)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["conv(4,k=3)", "conv(5,k=3,p=1)", "conv(3,k=2,s=2)", "maxpool(2)", "avgpool(2)", "bn", "relu"]
        ),
        min_size=1,
        max_size=6,
    ),
    st.integers(8, 40),
)
def test_random_stacks_match_torch(ops, size):
    spec = " ".join(ops) + " flatten fc(7)"
    try:
        rows = arith.run_layers((3, size, size), spec)
    except ArithError:
        with pytest.raises((RuntimeError, ValueError)):
            _torch_stack(arith.parse_layers(spec), 3)(torch.zeros(1, 3, size, size))
        return
    m = _torch_stack(arith.parse_layers(spec), 3)
    y = m(torch.zeros(2, 3, size, size))
    assert tuple(y.shape[1:]) == rows[-1].output
    assert sum(p.numel() for p in m.parameters()) == arith.totals(rows)["params"]


def test_receptive_field_against_gradient():
    """The receptive field is exactly the input region whose pixels change output cell (0, 0)."""
    spec = "conv(2,k=3) avgpool(2) conv(2,k=3,d=2) conv(2,k=5,s=2)"
    rows = arith.run_layers((1, 64, 64), spec)
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AvgPool2d(2), nn.Conv2d(2, 2, 3, dilation=2), nn.Conv2d(2, 2, 5, 2))
    x = torch.randn(1, 1, 64, 64, requires_grad=True)
    y = m(x)
    y[0, 0, 2, 3].backward()
    nz = x.grad[0, 0].abs() > 0
    rows_idx = nz.any(1).nonzero().flatten()
    cols_idx = nz.any(0).nonzero().flatten()
    rf = rows[-1].receptive_field
    jump = rows[-1].jump
    off = rows[-1].field.offset
    assert int(rows_idx.max() - rows_idx.min() + 1) == rf[0]
    assert int(cols_idx.max() - cols_idx.min() + 1) == rf[1]
    assert int(rows_idx.min()) == off[0] + 2 * jump[0]
    assert int(cols_idx.min()) == off[1] + 3 * jump[1]
    assert rf == (20, 20) and jump == (4, 4)  # 3, then 3+1*1, then 4+4*2, then 12+4*2


@pytest.mark.parametrize("text", ["3x32", "axb", "-1", "0", "3x0x3", "3x32x32x4"])
def test_malformed_sizes(text):
    with pytest.raises(UsageError):
        c, h, w = arith.parse_size(text)
        if c is None:
            raise UsageError("no channels")


def test_impossible_configurations():
    with pytest.raises(ArithError, match="larger than the padded input"):
        arith.conv2d((3, 4, 4), out_channels=1, kernel=7)
    with pytest.raises(ArithError, match="does not divide"):
        arith.conv2d((3, 8, 8), out_channels=4, kernel=3, groups=2)
    with pytest.raises(ArithError, match="stride"):
        arith.conv2d((3, 8, 8), out_channels=4, kernel=3, stride=0)
    with pytest.raises(ArithError):
        arith.conv2d((3, 8, 8), out_channels=4, kernel=3, padding=-1)
    with pytest.raises(UsageError, match="unknown layer"):
        arith.parse_layers("conv(3) wibble")
