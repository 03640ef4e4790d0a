import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two runs that a test compares bit for bit must train with the same threads: the thread policy would choose them
# from the machine's load, which CI neighbours change between two runs (tests/test_threads.py tests the policy).
os.environ.setdefault("CNN_THREADS", "2")


def _collector_for_a_large_heap() -> None:
    """The suite's heap is large (torch, torchvision, thousands of FX graphs and meta models): Python's collector,
    run every 700 allocations, would walk all of it again and again (about 10% of the suite's time). torch and
    torchvision are imported and frozen once (never collected: they live as long as the process anyway), and the
    young generation is collected less often (not much less: cyclic garbage holding real tensors must not pile up,
    the suite forks DataLoader workers and subprocesses from this process)."""
    import gc

    import torch  # noqa: F401
    import torchvision  # noqa: F401

    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)


_collector_for_a_large_heap()


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        help="rewrite tests/golden/ from the current output instead of comparing (torchinfo's --overwrite)",
    )


def run_cnn(*args, env=None, cwd=None, timeout=600, check=None, sub=False):
    """Run `cnn ARGS` and return a CompletedProcess (returncode, stdout, stderr).

    By default in this process, through the same `main()` the console script calls (torch is imported once for the
    whole suite); `sub=True` runs `python -m cnncli` in a real subprocess, as a user would.
    """
    if not sub:
        return _run_in_process(args, env, check)
    e = dict(os.environ)
    e.pop("CNN_DEBUG", None)
    e.setdefault("CI", "1")
    e.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "cnncli", *map(str, args)],
        capture_output=True,
        text=True,
        env=e,
        cwd=cwd or ROOT,
        timeout=timeout,
    )
    if check is not None and p.returncode != check:
        raise AssertionError(f"exit {p.returncode} != {check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def _run_in_process(args, env, check):
    import contextlib
    import io

    from cnncli.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    os.environ.pop("CNN_DEBUG", None)
    os.environ["CI"] = "1"
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main([str(a) for a in args])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    p = subprocess.CompletedProcess(["cnn", *map(str, args)], code, out.getvalue(), err.getvalue())
    if check is not None and p.returncode != check:
        raise AssertionError(f"exit {p.returncode} != {check}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


@pytest.fixture(autouse=True)
def _single_thread_torch():
    # Two cores on CI: keep each test's intra-op threads modest and deterministic.
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(2)
    yield
    if "cnncli.errors" in sys.modules:  # an in-process command that was interrupted leaves its record behind
        sys.modules["cnncli.errors"].begin_command()


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


def make_checkpoint(path, name, size=(3, 32, 32), num_classes=10, seed=0, dataset=""):
    """A checkpoint in the real format for an untrained registry model, with non-trivial BatchNorm statistics."""
    import torch

    from cnncli.checkpoint import Checkpoint, ModelSpec
    from cnncli.models import get_model
    from cnncli.preprocess import Preprocess

    torch.manual_seed(seed)
    model = get_model(name, num_classes=num_classes, in_channels=size[0], image_size=size[1:])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    pre = Preprocess(tuple(size), (0.5,) * size[0], (0.25,) * size[0], tuple(f"c{i}" for i in range(num_classes)))
    Checkpoint(ModelSpec(name, num_classes, size[0], tuple(size[1:])), model.state_dict(), pre, dataset).save(str(path))
    return str(path)


@pytest.fixture(scope="session")
def lines_run(tmp_path_factory):
    """A linenet trained on `lines` the default way (about 10 s): best.pt for fcn/scoremap/export tests."""
    tmp = tmp_path_factory.mktemp("lines")
    p = run_cnn("train", "linenet", "--data", "lines", "--project", tmp, "--name", "lines", "--json", check=0)
    import json

    return json.loads(p.stdout)


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("digits")
    p = run_cnn(
        "train", "lenet", "--data", "digits", "--epochs", "20", "--project", tmp, "--name", "d", "--json", check=0
    )
    import json

    return json.loads(p.stdout)
