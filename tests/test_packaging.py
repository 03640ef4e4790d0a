"""The Dockerfile and CI install the package the same way the README says."""

import os
import re

import tomllib
from conftest import ROOT


def _read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_dockerfile_copies_what_the_package_needs_and_installs_it():
    docker = _read("Dockerfile")
    copied = re.findall(r"^COPY\s+(.+?)\s+\S+\s*$", docker, re.M)
    copied = {p for line in copied for p in line.split()}
    assert {"pyproject.toml", "README.md", "cnncli"} <= copied  # README is the package's readme
    assert re.search(r"pip install \.(\s|$)", docker)
    assert 'ENTRYPOINT ["cnn"]' in docker
    meta = tomllib.loads(_read("pyproject.toml"))
    assert meta["project"]["readme"] == "README.md"
    assert meta["project"]["scripts"]["cnn"] == "cnncli.cli:main"


def test_ci_runs_the_readme_lines():
    readme, ci = _read("README.md"), _read(".ci", "run")
    setup = re.search(r"pip install -q --upgrade pip && pip install -q -e \"\.\[dev\]\"", ci)
    assert setup, "CI must install like the README"
    assert 'pip install -e ".[dev]"' in readme
    assert 'pip install -e ".[dev]" && python -m pytest -q' in readme
    assert ci.strip().splitlines()[-1] == "python -m pytest -q"  # exactly the README's test command
    assert "python3 -m venv .venv" in ci and "set -euo pipefail" in ci


def test_dependencies_are_declared():
    deps = " ".join(tomllib.loads(_read("pyproject.toml"))["project"]["dependencies"])
    for name in ("typer", "rich", "torch", "torchvision", "torchinfo", "onnx", "onnxruntime", "onnxscript", "numpy"):
        assert name in deps
    assert "+cpu" not in deps and "==" not in deps
