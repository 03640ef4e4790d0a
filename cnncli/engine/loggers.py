"""`cnn train --logger tensorboard,mlflow`: the run's per-epoch figures (the same numbers as metrics.csv) sent to
the tools people watch runs in. Each logger is optional (an extra); asking for one that is not installed is exit 2
with its pip line, checked before any data is loaded. Only rank 0 logs."""

from __future__ import annotations

import importlib.util
import json
import os

from cnncli.config import parse_loggers
from cnncli.errors import UsageError

EXTRAS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}  # logger: (module, extra)


def check_installed(text: str) -> list[str]:
    """The loggers asked for, each importable; otherwise exit 2 with the pip line."""
    names = parse_loggers(text)
    for n in names:
        if n in EXTRAS:
            module, extra = EXTRAS[n]
            if importlib.util.find_spec(module) is None:
                raise UsageError(f"--logger {n} needs {module}", f'pip install "cnncli[{extra}]"')
    return names


def scalars(row) -> dict[str, float]:
    """An epoch's figures under the names every logger uses."""
    return {
        "train/loss": row.train_loss,
        "train/accuracy": row.train_accuracy,
        "val/loss": row.val_loss,
        "val/accuracy": row.val_accuracy,
        "lr": row.lr,
    }


class TensorBoard:
    """Event files in the run folder (`tensorboard --logdir runs`): the scalars per epoch."""

    def __init__(self, run_dir: str, cfg):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir, self.cfg, self.writer, self.make = run_dir, cfg, None, SummaryWriter

    def epoch(self, row) -> None:
        if self.writer is None:  # the run folder exists (and is locked) by now
            self.writer = self.make(log_dir=self.run_dir)
            self.writer.add_text("args", "```\n" + json.dumps(self.cfg.to_dict(), indent=2) + "\n```", 0)
        for k, v in scalars(row).items():
            self.writer.add_scalar(k, v, row.epoch)
        self.writer.flush()

    def finish(self, run_dir: str) -> None:
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow:
    """A run in $MLFLOW_TRACKING_URI (default ./mlruns): params, the scalars per epoch, then best.pt, last.pt and
    curves.png as artifacts. The run's id is kept in the run folder, so a resumed run goes on logging into it."""

    def __init__(self, run_dir: str, cfg):
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:  # the documented default: a local ./mlruns folder (MLflow 3 asks to opt in to its file store)
            uri = "file:" + os.path.abspath("mlruns")
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        # a server that does not answer fails in seconds, not after MLflow's default minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(tracking_uri=uri)
        self.id_file = os.path.join(run_dir, "mlflow.json")
        self.run_id = None
        if os.path.exists(self.id_file):  # a resumed run
            try:
                with open(self.id_file) as f:
                    self.run_id = json.load(f)["run_id"]
                self.client.get_run(self.run_id)
            except Exception:
                self.run_id = None
        if self.run_id is None:
            project = os.path.basename(os.path.abspath(cfg.project)) or "runs"
            exp = self.client.get_experiment_by_name(project)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(project)
            run = self.client.create_run(exp_id, run_name=os.path.basename(run_dir))
            self.run_id = run.info.run_id
            from mlflow.entities import Param

            params = [Param(k, str(v)[:6000]) for k, v in cfg.to_dict().items() if v is not None]
            self.client.log_batch(self.run_id, params=params)

    def epoch(self, row) -> None:
        import time

        from mlflow.entities import Metric

        if not os.path.exists(self.id_file):  # the run folder exists by now
            from cnncli.fileio import write_json

            write_json(self.id_file, {"run_id": self.run_id, "tracking_uri": self.uri})
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, row.epoch) for k, v in scalars(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, run_dir: str) -> None:
        for name in ("best.pt", "last.pt", "curves.png", "metrics.csv", "args.json"):
            path = os.path.join(run_dir, name)
            if os.path.exists(path):
                self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id, "FINISHED")

    def close(self) -> None:
        pass


KINDS = {"tensorboard": TensorBoard, "mlflow": MLflow}


class Loggers:
    """The loggers of one run (none but metrics.csv unless asked), called by the training loop on rank 0."""

    def __init__(self, names: list[str], run_dir: str, cfg):
        """Connects each logger (before the run folder is made: a tracking server that cannot be reached leaves no
        run behind)."""
        self.items = []
        for n in names:
            if n not in KINDS:
                continue
            try:
                self.items.append(KINDS[n](run_dir, cfg))
            except Exception as e:
                cause = " ".join(str(e).split())[:300] or type(e).__name__
                raise UsageError(f"--logger {n}: {cause}", "check the tracking URI ($MLFLOW_TRACKING_URI)") from e

    def epoch(self, row) -> None:
        for item in self.items:
            item.epoch(row)

    def finish(self, run_dir: str) -> None:
        for item in self.items:
            item.finish(run_dir)
        self.items = []

    def close(self) -> None:
        for item in self.items:
            item.close()
        self.items = []
