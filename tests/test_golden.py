"""Golden files: what `cnn shape`, `cnn summary` and every `--help` print, compared to tests/golden/ byte for byte.

A change to any of them shows up as a diff to review; `python -m pytest tests/test_golden.py --update-golden`
rewrites the files (as torchinfo's `--overwrite`), and the diff goes into the commit.
"""

import os
import re

import pytest
from conftest import run_cnn

GOLDEN = os.path.join(os.path.dirname(__file__), "golden")

CASES = {
    "shape-conv": ["shape", "--in", "3x32x32", "--k", "5", "--s", "1", "--p", "2", "--out-channels", "10"],
    "shape-layers": [
        "shape",
        "--in",
        "1x32x32",
        "--layers",
        "conv(6,k=5) relu maxpool(2) conv(16,k=5) maxpool(2) flatten fc(120) fc(84) fc(10)",
    ],
    "shape-convT-json": [
        "shape",
        "--in",
        "16x8x8",
        "--op",
        "convT",
        "--k",
        "4",
        "--s",
        "2",
        "--p",
        "1",
        "--out-channels",
        "8",
        "--json",
    ],
    "summary-lenet5": ["summary", "lenet5", "--in", "3x32x32"],
    "summary-linenet-json": ["summary", "linenet", "--in", "1x32x32", "--json", "--device", "cpu"],
}


def _help_cases():
    from cnncli.cli import commands

    cases = {"help": ["--help"]}
    for name in commands():
        cases[f"help-{name}"] = [name, "--help"]
    for sub in ("kernels", "features", "rf"):
        cases[f"help-inspect-{sub}"] = ["inspect", sub, "--help"]
    return cases


ALL = {**CASES, **_help_cases()}


@pytest.mark.parametrize("name", sorted(ALL))
def test_output_matches_its_golden_file(name, request):
    # `cnn --help` lists the commands in the order a fresh process registers them: run it as a user would
    p = run_cnn(*ALL[name], env={"COLUMNS": "100", "CNN_DEBUG": ""}, check=0, sub=name == "help")
    text = re.sub(r"/tmp/[^\s'\"]+", "<tmp>", p.stdout)
    path = os.path.join(GOLDEN, name + ".txt")
    if request.config.getoption("--update-golden") or not os.path.exists(path):
        if not request.config.getoption("--update-golden"):
            pytest.fail(f"no golden file {path}: run with --update-golden and review it")
        with open(path, "w") as f:
            f.write(text)
        return
    with open(path) as f:
        assert text == f.read(), f"{name}: output differs from {path} (review, then --update-golden)"
