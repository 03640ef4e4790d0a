"""`cnn train --config FILE` (JSON, TOML, YAML) and `--print-config`: the command line wins, a run's args.json
repeats the run, and a bad file is exit 2 naming the key."""

import json

import pytest
import torch
from conftest import run_cnn

from cnncli.checkpoint import Checkpoint

QUICK = ["--max-steps", "3", "--epochs", "1", "--device", "cpu", "--precision", "32", "--deterministic"]


def test_a_runs_args_json_repeats_the_run_bit_identically(tmp_path):
    run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path, "--augment", "trivial", *QUICK, check=0)
    args = tmp_path / "train" / "args.json"
    run_cnn("train", "--config", args, "--name", "again", check=0)
    a = Checkpoint.load(str(tmp_path / "train" / "last.pt")).state_dict
    b = Checkpoint.load(str(tmp_path / "again" / "last.pt")).state_dict
    assert all(torch.equal(v, b[k]) for k, v in a.items())
    again = json.loads((tmp_path / "again" / "args.json").read_text())
    assert {**json.loads(args.read_text()), "name": "again"} == again


@pytest.mark.parametrize(
    "name, text",
    [
        ("c.json", '{"model": "lenet", "data": "digits", "epochs": 7, "augment": "trivial", "img-size": "24x20"}'),
        ("c.toml", 'model = "lenet"\ndata = "digits"\nepochs = 7\naugment = "trivial"\nimg_size = [24, 20]\n'),
        ("c.yaml", "model: lenet\ndata: digits\nepochs: 7\naugment: trivial\nimg_size: [24, 20]\n"),
    ],
)
def test_each_format_is_read_and_the_command_line_wins(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    out = run_cnn("train", "--config", f, "--print-config", check=0).stdout
    fmt = name.split(".")[1]
    printed = tmp_path / f"printed.{fmt}"
    printed.write_text(out)
    again = run_cnn("train", "--config", printed, "--print-config", check=0).stdout
    assert again == out  # what --print-config prints is a config that says the same
    text = run_cnn("train", "--config", f, "--epochs", "2", "--print-config", check=0).stdout
    if fmt == "json":
        d = json.loads(text)
    elif fmt == "toml":
        import tomllib

        d = tomllib.loads(text)
    else:
        import yaml

        d = yaml.safe_load(text)
    assert d["epochs"] == 2 and d["augment"] == "trivial" and d["img_size"] == [24, 20] and d["model"] == "lenet"


def test_print_config_runs_nothing(tmp_path):
    p = run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path, "--print-config", check=0)
    assert json.loads(p.stdout)["model"] == "lenet"
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "text, needle",
    [
        ('{"model": "lenet", "epoks": 3}', "unknown key 'epoks' (did you mean 'epochs'?)"),
        ('{"model": "lenet", "epochs": "three"}', "'epochs' must be an integer"),
        ('{"model": "lenet", "ema": "yes"}', "'ema' must be true or false"),
        ('{"model": "lenet", "lr": NaN}', "'lr' must be a number"),
        ('{"model": "lenet", "resume": "runs/x"}', "command-line option"),
        ('{"model": "lenet",', "not valid JSON"),
        ('["lenet"]', "table of options"),
        ('{"model": "lenet", "data": "digits", "augment": "fancy"}', "unknown --augment"),
    ],
)
def test_bad_config_files_exit_2_naming_the_key(tmp_path, text, needle):
    f = tmp_path / "c.json"
    f.write_text(text)
    p = run_cnn("train", "--config", f, "--data", "digits", "--project", tmp_path / "runs")
    assert p.returncode == 2 and p.stderr.startswith("error:") and needle in p.stderr, p.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_config_format_and_missing_file(tmp_path):
    (tmp_path / "c.ini").write_text("[x]")
    p = run_cnn("train", "--config", tmp_path / "c.ini")
    assert p.returncode == 2 and "unknown format" in p.stderr
    p = run_cnn("train", "--config", tmp_path / "none.json")
    assert p.returncode == 2 and "not found" in p.stderr
