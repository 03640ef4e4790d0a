import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cnn(*args, env=None, cwd=None, timeout=600, check=None):
    """Run `python -m cnncli ARGS` in a subprocess, as a user would, and return the CompletedProcess."""
    e = dict(os.environ)
    e.pop("CNN_DEBUG", None)
    e.setdefault("CI", "1")
    e.update(env or {})
    p = subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], capture_output=True, text=True,
                       env=e, cwd=cwd or ROOT, timeout=timeout)
    if check is not None and p.returncode != check:
        raise AssertionError(f"exit {p.returncode} != {check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Two cores on CI: keep each test's intra-op threads modest and deterministic.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(2)
    yield


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if not has_cuda:
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)
