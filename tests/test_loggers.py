"""`cnn train --logger tensorboard,mlflow`: read back with TensorBoard's own reader and MLflow's client, the numbers
are metrics.csv's; a logger that is not installed is exit 2 with the pip line."""

import csv
import json

import pytest
from conftest import run_cnn

QUICK = ["--epochs", "3", "--max-steps", "9", "--device", "cpu", "--precision", "32"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loggers")
    env = {"MLFLOW_TRACKING_URI": "file:" + str(tmp / "mlruns"), "MLFLOW_ALLOW_FILE_STORE": "true"}
    run_cnn(
        "train",
        "lenet",
        "--data",
        "digits",
        "--batch-size",
        "64",
        "--project",
        tmp / "runs",
        "--logger",
        "tensorboard,mlflow",
        *QUICK,
        env=env,
        check=0,
    )
    run = tmp / "runs" / "train"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return tmp, run, rows, env


KEYS = {
    "train/loss": "train_loss",
    "train/accuracy": "train_accuracy",
    "val/loss": "val_loss",
    "val/accuracy": "val_accuracy",
    "lr": "lr",
}


def test_tensorboard_scalars_are_metrics_csv(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run, rows, _ = logged
    acc = EventAccumulator(str(run))
    acc.Reload()
    assert set(KEYS) <= set(acc.Tags()["scalars"])
    for tag, col in KEYS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [int(r["epoch"]) for r in rows]
        assert [e.value for e in events] == pytest.approx([float(r[col]) for r in rows], rel=1e-5)


def test_mlflow_run_holds_params_metrics_and_checkpoints(logged):
    from mlflow.tracking import MlflowClient

    tmp, run, rows, env = logged
    import os

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    r = client.get_run(run_id)
    assert r.info.status == "FINISHED" and r.data.params["model"] == "lenet" and r.data.params["epochs"] == "3"
    for tag, col in KEYS.items():
        history = client.get_metric_history(run_id, tag)
        assert [m.step for m in history] == [int(x["epoch"]) for x in rows]
        assert [m.value for m in history] == pytest.approx([float(x[col]) for x in rows], rel=1e-5)
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"best.pt", "last.pt", "curves.png", "metrics.csv"} <= names


def test_a_logger_that_is_not_installed_is_exit_2_with_the_pip_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    p = run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path, "--logger", "mlflow")
    assert p.returncode == 2 and 'pip install "cnncli[mlflow]"' in p.stderr
    assert not (tmp_path / "train").exists()


def test_a_tracking_server_that_does_not_answer_leaves_no_run(tmp_path):
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}
    p = run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path, "--logger", "mlflow", *QUICK, env=env)
    assert p.returncode == 2 and p.stderr.startswith("error: --logger mlflow")
    assert not (tmp_path / "train").exists()
