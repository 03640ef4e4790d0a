"""The shape of the house: no import cycles, short functions, one config, commands and help that stay in step."""

import ast
import dataclasses
import os
import pathlib
import sys

import pytest
from conftest import ROOT, run_cnn

PKG = pathlib.Path(ROOT) / "cnncli"
MAX_BODY = 45
MAX_CLASS = 250


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """cnncli modules a module imports, at any depth (function-level imports included)."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "cnncli"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            if base.split(".")[0] != "cnncli":
                continue
            for a in node.names:  # `from pkg import submodule` imports the submodule
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base)
    return out - {name}


def test_no_import_cycles_inside_cnncli():
    mods = _modules()
    graph = {n: _imports(n, p, set(mods)) & set(mods) for n, p in mods.items()}
    assert graph["cnncli.analysis.fcn"] and "cnncli.checkpoint" in graph["cnncli.models.open"]  # the walk sees imports
    cycles, state = [], {}

    def visit(n, stack):
        state[n] = "open"
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                cycles.append(stack[stack.index(m) :] + [m])
            elif m not in state:
                visit(m, stack + [m])
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle(tmp_path):
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("def f():\n    from cnncli.b import g\n")
    b.write_text("from cnncli.a import f\n")
    known = {"cnncli.a", "cnncli.b"}
    assert _imports("cnncli.a", a, known) == {"cnncli.b"} and _imports("cnncli.b", b, known) == {"cnncli.a"}


def test_no_function_body_over_45_lines_and_no_class_over_250():
    long = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = node.end_lineno - node.body[0].lineno + 1
                if body > MAX_BODY:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({body} lines)")
            elif isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} class {node.name}")
    assert not long, long


def test_a_files_kind_is_told_by_its_suffix_in_one_place_only():
    """`fileio.is_onnx_file` tells an ONNX file from a PyTorch one by its content; no other code asks a model
    file's suffix what it is (`models.open.is_checkpoint_path` only tells a path from a registry name)."""
    import re

    pattern = re.compile(r"""(endswith|suffix)\W*\(?\s*\(?["']\.(onnx|pt2|pth?|ts|ckpt)\b""")
    hits = []
    for path in PKG.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{path.relative_to(PKG)}:{i}")
    where = {h.split(":")[0] for h in hits}
    assert "fileio.py" in where and where <= {"fileio.py", "models/open.py"}, hits  # the pattern sees the one place


def test_fit_reads_as_a_table_of_contents():
    import inspect

    from cnncli.engine.trainer import Trainer

    src = inspect.getsource(Trainer.fit)
    assert len(src.splitlines()) <= 25
    for phase in ("setup", "start_or_resume", "train_one_epoch", "evaluate", "end_epoch", "stop_reason", "finish"):
        assert f"self.{phase}(" in src


def _train_command():
    import typer.main

    from cnncli.cli import app, train  # noqa: F401  (registers the command)

    group = typer.main.get_command(app)
    return group.commands["train"]


def test_every_config_field_has_a_train_flag_with_the_same_default():
    from cnncli.config import TrainConfig

    cmd = _train_command()
    by_name = {p.name: p for p in cmd.params}
    renamed = {"compile": "compile_"}  # a Python keyword-ish name in the CLI function
    for f in dataclasses.fields(TrainConfig):
        param = by_name.get(renamed.get(f.name, f.name))
        assert param is not None, f"TrainConfig.{f.name} has no cnn train flag"
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name == "img_size":  # the flag takes text (HxW or N) that becomes [H, W]; both default to None
            assert param.default is None and default is None
            continue
        assert param.default == default, f"--{f.name}: flag default {param.default!r} != config {default!r}"


def test_commands_are_the_modules_in_cli_and_each_registers_itself():
    import importlib

    import typer.main

    from cnncli.cli import app, command_module, commands

    files = sorted(p.stem for p in (PKG / "cli").glob("*.py") if not p.stem.startswith("_"))
    assert sorted(command_module(n) for n in commands()) == files
    for name in files:
        importlib.import_module(f"cnncli.cli.{name}")
    assert set(typer.main.get_command(app).commands) == set(commands())


@pytest.mark.parametrize(
    "cmd,needles",
    [
        ([], []),
        (["train"], ["[sgd|adamw]", "[onecycle|cosine|none]", "[auto|32|bf16|16]", "folder:PATH", "cifar10", "lines"]),
        (["eval"], ["[test|val|train]"]),
        (["export"], ["[onnx|pt2]", "[auto|dynamo|torchscript|export]"]),
        (["models"], ["[builtin|torchvision|timm|all]"]),
        (["shape"], ["[conv|maxpool|avgpool|convT]"]),
        (["scoremap"], ["[lines]"]),
        (["summary"], []),
        (["fcn"], []),
    ],
)
def test_help_has_no_artefacts_and_lists_choices(cmd, needles):
    out = run_cnn(*cmd, "--help", check=0).stdout
    assert "\\[" not in out and "Usage: cnn" in out
    if cmd:
        assert "[default: " in out
    flat = " ".join(out.split())
    for n in needles:
        assert n in flat, n


def test_every_command_defaults_to_device_auto():
    import importlib

    import typer.main

    from cnncli.cli import app, command_module, commands

    for name in commands():
        importlib.import_module(f"cnncli.cli.{command_module(name)}")
    for name, cmd in typer.main.get_command(app).commands.items():
        for p in cmd.params:
            if p.name == "device":
                assert p.default == "auto", name


def test_export_format_names_agree_with_the_cli():
    from cnncli.cli.export import EXPORTERS, FORMATS
    from cnncli.export import export_formats

    table = export_formats()
    assert tuple(table) == FORMATS
    assert {w for f in table.values() for w in f.writers} | {"auto"} == set(EXPORTERS)


def test_library_never_prints_device_choice(capsys):
    from cnncli.engine.device import pick_device

    assert pick_device("auto").type in ("cpu", "cuda", "mps")
    assert capsys.readouterr() == ("", "")


def test_the_benchmark_reference_loop_ships_with_the_project():
    """benchmarks/train_throughput.py compares against this script: it must run from a fresh clone."""
    import subprocess

    script = os.path.join(ROOT, "benchmarks", "reference_train_loop.py")
    p = subprocess.run([sys.executable, script, "lenet", "2", "8"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert float(p.stdout.split("images/s=")[1]) > 0


def test_docs_tables_are_generated_from_the_registries():
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tables", os.path.join(ROOT, "docs", "make_tables.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for doc, (name, body) in mod.tables().items():
        with open(os.path.join(ROOT, "docs", doc)) as f:
            text = f.read()
        assert mod.replace_block(text, name, body) == text, f"docs/{doc} is stale: run python docs/make_tables.py"


def _doc_block(doc: str, first_line: str) -> str:
    with open(os.path.join(ROOT, "docs", doc)) as f:
        text = f.read()
    start = text.index(first_line)
    return text[start : text.index("```", start)]


def test_extending_md_examples_work(tmp_path):
    """The worked examples in docs/extending.md, run as written: a new dataset trains, a new command runs."""
    import json

    from cnncli.cli import app
    from cnncli.data import unregister_dataset

    before = list(app.registered_commands)
    try:
        exec(compile(_doc_block("extending.md", "# cnncli/data/sets/colours.py"), "colours.py", "exec"), {})
        exec(compile(_doc_block("extending.md", "# cnncli/cli/hello.py"), "hello.py", "exec"), {"__name__": "hello"})
        out = json.loads(run_cnn("hello", "lenet5", "--json", check=0).stdout)
        assert out == {"model": "lenet5", "params": 62006}
        p = run_cnn("train", "smallcnn", "--data", "colours", "--project", tmp_path, "--precision", "32", "--json")
        assert p.returncode == 0, p.stderr
        assert json.loads(p.stdout)["test_accuracy"] >= 0.9
    finally:
        app.registered_commands[:] = before
        unregister_dataset("colours")


def test_the_architecture_page_names_every_module():
    """docs/architecture.md stays true to the tree: every module of cnncli is named on it by its file name (the
    command modules of cli/ are found by listing, the model families by their names)."""
    text = (PKG.parent / "docs" / "architecture.md").read_text()
    missing = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG)
        if p.name == "__init__.py":
            wanted = f"{rel.parent.name}/" if rel.parent.parts else "__init__.py"
        elif rel.parts[0] == "cli" and not p.stem.startswith("_"):
            continue
        elif (
            rel.parts[0] == "models"
            and not p.stem.startswith("_")
            and p.stem not in ("open", "files", "detect", "transfer")
        ):
            wanted = p.stem
        else:
            wanted = p.name
        if wanted not in text:
            missing.append(str(rel))
    assert not missing, missing


def test_few_flat_modules_and_none_named_like_the_standard_library():
    import sys

    flat = sorted(p.stem for p in PKG.glob("*.py") if not p.stem.startswith("__"))
    assert len(flat) + 2 <= 8, flat  # with __init__ and __main__
    every = [p.stem for p in PKG.rglob("*.py") if not p.stem.startswith("__")]
    assert not [n for n in every if n in sys.stdlib_module_names], every


def test_the_tree_is_formatted_linted_and_type_checked():
    """The habits CI keeps: `ruff format --check`, `ruff check` (bugbear, pyupgrade, comprehensions, the ban on
    torch in the CLI) and mypy on what pyproject.toml names (the foundation and the runtime)."""
    import subprocess
    import sys

    root = PKG.parent
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    for argv in (
        [ruff, "format", "--check", "--no-cache", "."],
        [ruff, "check", "--no-cache", "."],
        [sys.executable, "-m", "mypy", "--no-incremental"],
    ):
        p = subprocess.run(argv, capture_output=True, text=True, cwd=root, timeout=300)
        assert p.returncode == 0, (argv[1:], p.stdout[-2000:], p.stderr[-2000:])


def test_each_result_is_one_dataclass_with_the_documented_keys(tmp_path):
    """summary, eval and scoremap results are dataclasses whose `as_json()` is the `--json` object, key for key:
    the CLI contract's keys are fields (a renamed field fails here), and the JSON printed is exactly as_json()."""
    import json

    from conftest import make_checkpoint

    from cnncli.analysis.summary import LayerRow, Summary
    from cnncli.engine.evaluate import EvalResult
    from cnncli.engine.scoremap import ScoreMap

    documented = {
        Summary: "model input output params trainable_params macs receptive_field jump memory layers",
        LayerRow: "name type output params macs receptive_field jump",
        EvalResult: "accuracy top5 loss per_class samples images_per_second",
        ScoreMap: "image scores_shape stride receptive_field argmax_counts",
    }
    for cls, keys in documented.items():
        names = [f.name for f in dataclasses.fields(cls)]
        assert set(keys.split()) <= set(names), (cls.__name__, set(keys.split()) - set(names))
    ckpt = make_checkpoint(tmp_path / "m.pt", "lenet5")
    out = json.loads(run_cnn("summary", ckpt, "--json", check=0).stdout)
    assert list(out) == [f.name for f in dataclasses.fields(Summary)][:11]  # no ONNX-only keys for a .pt
    assert list(out["layers"][0]) == [f.name for f in dataclasses.fields(LayerRow)]
