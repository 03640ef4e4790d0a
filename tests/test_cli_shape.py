"""`cnn shape` and the CLI conventions, through real subprocesses (exit codes, JSON, no torch at start-up)."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import ROOT, run_cnn

LENET = "conv(6,k=5) relu maxpool(2) conv(16,k=5) maxpool(2) flatten fc(120) fc(84) fc(10)"


def test_single_conv_text():
    p = run_cnn("shape", "--in", "3x32x32", "--k", "5", "--s", "1", "--p", "2", "--out-channels", "10", check=0)
    assert "3x32x32 -> 10x32x32" in p.stdout
    assert "floor((32 + 2*2 - 1*(5-1) - 1) / 1) + 1 = 32" in p.stdout
    assert "= 760" in p.stdout


def test_single_conv_json():
    p = run_cnn("shape", "--in", "3x32x32", "--k", "5", "--p", "2", "--out-channels", "10", "--json", check=0)
    out = json.loads(p.stdout)
    assert out["input"] == [3, 32, 32] and out["output"] == [10, 32, 32]
    assert out["params"] == 760 and out["macs"] == 768000


def test_layers_json_lenet():
    p = run_cnn("shape", "--in", "1x32x32", "--layers", LENET, "--json", check=0)
    out = json.loads(p.stdout)
    assert out["params"] == 61706
    assert out["output"] == [10]
    assert [layer["output"] for layer in out["layers"]][:5] == [
        [6, 28, 28],
        [6, 28, 28],
        [6, 14, 14],
        [16, 10, 10],
        [16, 5, 5],
    ]
    assert set(out["layers"][0]) >= {"name", "output", "params", "macs", "receptive_field", "jump"}
    assert out["layers"][-1]["receptive_field"] == [32, 32]


def test_layers_table_has_totals():
    p = run_cnn("shape", "--in", "3x32x32", "--layers", LENET, check=0)
    assert "62,006" in p.stdout and "total" in p.stdout


def test_pool_ceil_and_convT():
    p = run_cnn(
        "shape",
        "--in",
        "64x56x56",
        "--k",
        "3",
        "--s",
        "2",
        "--p",
        "1",
        "--op",
        "maxpool",
        "--ceil-mode",
        "--json",
        check=0,
    )
    assert json.loads(p.stdout)["output"] == [64, 29, 29]
    p = run_cnn(
        "shape",
        "--in",
        "16x8x8",
        "--k",
        "4",
        "--s",
        "2",
        "--p",
        "1",
        "--op",
        "convT",
        "--out-channels",
        "8",
        "--json",
        check=0,
    )
    assert json.loads(p.stdout)["output"] == [8, 16, 16]
    assert json.loads(p.stdout)["params"] == 16 * 8 * 16 + 8


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--in", "3x32"], "malformed size"),
        (["--in", "axb"], "malformed size"),
        (["--in", "-1"], "malformed size"),
        (["--in", "3x4x4", "--k", "7"], "larger than the padded input"),
        (["--in", "3x8x8", "--groups", "2", "--out-channels", "4"], "does not divide"),
        (["--in", "3x8x8", "--s", "0"], "stride must be at least 1"),
        (["--in", "3x8x8", "--k", "x"], "malformed kernel"),
        (["--in", "3x8x8", "--op", "bogus"], "unknown --op"),
        (["--in", "3x8x8", "--layers", "conv(4) wobble"], "unknown layer"),
        (["--no-such-option"], "No such option"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, needle):
    p = run_cnn("shape", *args, sub=True)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr and p.stdout == ""


def test_debug_shows_traceback():
    p = run_cnn("shape", "--in", "axb", env={"CNN_DEBUG": "1"}, sub=True)
    assert p.returncode != 0 and "Traceback" in p.stderr


def test_version_and_help():
    from cnncli import __version__

    assert run_cnn("--version", check=0).stdout.strip() == f"cnn {__version__}"
    help_text = run_cnn("--help", check=0).stdout
    for cmd in ("shape", "models", "summary", "train", "eval", "fcn", "scoremap", "export"):
        assert cmd in help_text
    assert "--out-channels" in run_cnn("shape", "--help", check=0).stdout


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["shape", "--in", "3x32x32", "--k", "3"],
        ["models", "--help"],
        ["shape", "--in", "3x32x32", "--layers", LENET, "--json"],
        ["train", "--help"],
    ],
)
def test_startup_never_imports_torch(argv):
    code = (
        "import sys\n"
        "from cnncli.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'onnxruntime', 'numpy', 'matplotlib') if m in sys.modules)\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env={**os.environ, "CI": "1"}
    )
    assert "HEAVY []" in p.stderr, p.stderr


def test_console_script_and_module_agree():
    exe = os.path.join(os.path.dirname(sys.executable), "cnn")
    a = subprocess.run([exe, "shape", "--in", "3x32x32", "--k", "5", "--json"], capture_output=True, text=True)
    b = run_cnn("shape", "--in", "3x32x32", "--k", "5", "--json", sub=True)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_ruff_bans_heavy_imports_in_cli(tmp_path):
    """The TID253 rule in pyproject.toml really fires for a module-level torch import under cnncli/cli/."""
    ruff = os.path.join(os.path.dirname(sys.executable), "ruff")
    bad = os.path.join(ROOT, "cnncli", "cli", "_tmp_banned_probe.py")
    with open(bad, "w") as f:
        f.write("import torch  # noqa: F401\n")
    try:
        p = subprocess.run(
            [ruff, "check", "--no-cache", "--select", "TID253", bad], capture_output=True, text=True, cwd=ROOT
        )
    finally:
        os.remove(bad)
    assert p.returncode != 0 and "TID253" in p.stdout
    clean = subprocess.run([ruff, "check", "--no-cache", "cnncli"], capture_output=True, text=True, cwd=ROOT)
    assert clean.returncode == 0, clean.stdout


def test_shell_completion_completes_commands_and_options_without_torch():
    """Typer's completion: `--show-completion` prints the script `--install-completion` installs, and what
    a TAB runs (the script calls `cnn` with _CNN_COMPLETE set) completes commands and their options without
    importing torch (benchmarks/startup.py times it)."""
    exe = os.path.join(os.path.dirname(sys.executable), "cnn")
    env = {**os.environ, "CI": "1"}
    # from bash, as a user types it (Typer finds the shell among the parent processes)
    script = subprocess.run(  # (`; true`: bash stays cnn's parent instead of exec-ing it)
        ["bash", "-c", f"{exe} --show-completion; true"], capture_output=True, text=True, env=env
    )
    assert script.returncode == 0 and "_CNN_COMPLETE" in script.stdout and "complete" in script.stdout, script

    def tab(words: str) -> list[str]:
        n = len(words.split()) - (0 if words.endswith(" ") else 1)  # the word being completed
        tab_env = {**env, "_CNN_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(n)}
        # Python lists every module it imports on stderr; the completions are on stdout
        got = subprocess.run([exe], capture_output=True, text=True, env={**tab_env, "PYTHONPROFILEIMPORTTIME": "1"})
        assert got.returncode == 0 and "| cnncli.cli" in got.stderr, got.stderr[-2000:]
        assert not [ln for ln in got.stderr.splitlines() if ln.rstrip().endswith("| torch")]
        return got.stdout.split()

    assert "shape" in tab("cnn sh") and "summary" not in tab("cnn sh")
    assert {"--out-channels", "--ceil-mode"} <= set(tab("cnn shape --"))
    assert "--resume" in tab("cnn train --re")


def test_completion_with_no_shell_to_find_is_one_error_line(monkeypatch):
    """Typer finds the shell among cnn's parent processes (shellingham); where there is none (a cron job, a CI step
    without a shell), that is one error line and exit 2, not "cannot write the result"."""
    import shellingham

    def no_shell(*args, **kwargs):
        raise shellingham.ShellDetectionFailure()

    monkeypatch.setattr(shellingham, "detect_shell", no_shell)
    p = run_cnn("--show-completion")
    assert p.returncode == 2 and p.stdout == "", p
    assert p.stderr.strip().splitlines() == [
        "error: cannot tell which shell cnn runs in, for --show-completion/--install-completion (run it from bash, "
        "zsh, fish or PowerShell)"
    ]


def test_the_in_help_lists_only_the_sizes_shape_takes():
    """`--in`'s help promised HxW and N, which cnn shape refuses (it needs the channels): every form the help names
    is taken, and the forms it does not name are refused with the one it does."""
    text = " ".join(run_cnn("shape", "--help", check=0).stdout.split())
    forms = {"CxHxW": "3x32x32", "HxW": "32x32", "N ": "32"}
    named = {f for f in forms if re.search(rf"--in TEXT\s+Input size[^.]*\b{f.strip()}\b", text)}
    assert named == {"CxHxW"}
    for form, value in forms.items():
        p = run_cnn("shape", "--in", value, "--k", "3")
        assert (p.returncode == 0) == (form in named), (form, p.stderr)
        if p.returncode:
            assert "CxHxW" in p.stderr
