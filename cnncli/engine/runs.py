"""A training run's folder and its life: the next free name, what `--resume` continues, one writer per folder, the
files a run leaves (args.json, metrics.csv, summary.json, curves.png), and stopping cleanly on a signal."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager
from dataclasses import asdict

from cnncli import fileio
from cnncli.checkpoint import Checkpoint
from cnncli.config import TrainConfig
from cnncli.engine.events import EpochResult
from cnncli.errors import UsageError


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: last.pt has been written and the run can be resumed."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir)
        self.run_dir = run_dir


class StopRequest:
    """Set by SIGINT/SIGTERM; the loop checks it after each step."""

    signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None


@contextmanager
def stop_on_signals():
    """SIGINT and SIGTERM set a flag instead of killing the process, so the current step finishes and last.pt is
    written; the previous handlers come back afterwards."""
    request = StopRequest()

    def on_signal(signum, frame):
        request.signal = signum

    previous = {}
    for s in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[s] = signal.signal(s, on_signal)
        except ValueError:  # not in the main thread: signals stay with their owner
            pass
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def next_run_dir(project: str, name: str) -> str:
    """PROJECT/NAME, or NAME2, NAME3... when it exists: an earlier run is never overwritten."""
    base = os.path.join(project, name)
    if not os.path.exists(base):
        return base
    i = 2
    while os.path.exists(f"{base}{i}"):
        i += 1
    return f"{base}{i}"


def resolve_resume(path: str) -> str:
    """A run folder or a checkpoint -> the last.pt to resume from."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.exists(path):
        raise UsageError(f"nothing to resume at {path}", "give a run folder with last.pt, e.g. runs/train")
    return path


def resume_config(request: TrainConfig, resume: str) -> tuple[TrainConfig, Checkpoint, str]:
    """(the saved run's config, its last.pt, its folder) for `--resume PATH`; `--device`, `--epochs` and
    `--max-steps` given with `--resume` override the saved ones, and a MODEL or --data that names another run is
    refused. A run with nothing left to train is RunComplete."""
    from cnncli.models import is_user_model

    last_pt = resolve_resume(resume)
    ckpt = Checkpoint.load(last_pt)
    if ckpt.training is None:
        raise UsageError(f"{last_pt} has no training state", "resume from last.pt, not best.pt")
    saved = TrainConfig.from_dict(ckpt.args)
    if saved.model and is_user_model(saved.model) and not request.model:  # a run folder never picks a .py
        raise UsageError(
            f"{last_pt} is a run of the Python file {saved.model}; cnn imports a .py file only when you name it",
            f"cnn train {saved.model} --resume {os.path.dirname(last_pt)}",
        )
    for flag, asked, had in (("MODEL", request.model, saved.model), ("--data", request.data, saved.data)):
        if asked and asked != had:
            raise UsageError(
                f"{last_pt} is a run of {saved.model} on {saved.data}: {flag} {asked} does not match",
                "give --resume alone to continue it, or start a new run without --resume",
            )
    if request.device != "auto":
        saved.device = request.device
    if request.epochs:  # --epochs with --resume extends (or shortens) the run
        saved.epochs = request.epochs
    if request.max_steps is not None:  # and --max-steps moves a step limit
        saved.max_steps = request.max_steps
    run_dir = os.path.dirname(os.path.abspath(last_pt))
    _refuse_complete(saved, ckpt, run_dir)
    return saved, ckpt, run_dir


class RunComplete(Exception):
    """`--resume` of a run with nothing left to train: said, and nothing is rewritten (exit 0, as a requeued job
    that already finished should)."""

    def __init__(self, run_dir: str, message: str):
        super().__init__(message)
        self.run_dir = run_dir
        self.message = message

    def summary(self) -> dict:
        """The run's summary.json, as the run wrote it (what --json prints)."""
        import json

        try:
            with open(os.path.join(self.run_dir, "summary.json")) as f:
                got = json.load(f)
            return got if isinstance(got, dict) else {}
        except (OSError, ValueError):
            return {}


def _refuse_complete(cfg: TrainConfig, ckpt: Checkpoint, run_dir: str) -> None:
    """A finished run is not trained again (which only rewrote its summary, with 0 images/s): RunComplete says what
    is complete and how to train it longer."""
    if ckpt.step_in_epoch > 0:  # stopped inside an epoch (a signal): there is work left
        return
    why, more = [], []
    if ckpt.epoch >= cfg.epochs:
        why.append(f"{ckpt.epoch} of {cfg.epochs} epochs are done")
        more.append(f"--epochs N (N > {cfg.epochs})")
    if cfg.max_steps is not None and ckpt.global_step >= cfg.max_steps:
        why.append(f"it stopped at --max-steps {cfg.max_steps}")
        more.append(f"--max-steps N (N > {cfg.max_steps})")
    if not why:
        return
    message = f"{run_dir} is complete ({', '.join(why)}); nothing was trained. To train it longer: "
    raise RunComplete(run_dir, message + f"cnn train --resume {run_dir} {' '.join(more)}")


class RunFolder:
    """The folder one run writes, held by one writer (a lock) from `open` to `release`. Only rank 0 opens one."""

    def __init__(self, path: str):
        self.path = path
        self.last = os.path.join(path, "last.pt")
        self.best = os.path.join(path, "best.pt")
        self.lock: fileio.FolderLock | None = None

    def open(self, cfg: TrainConfig) -> RunFolder:
        """Create (or take up again) the folder, lock it, clear a killed write's temp files, write args.json."""
        fileio.check_output_folder(self.path, "run folder")
        os.makedirs(self.path, exist_ok=True)
        # one writer per run: a second `--resume` of the same run (or a run racing for its name) is refused
        self.lock = fileio.FolderLock(self.path).acquire()
        try:
            fileio.remove_stale_temp_files(self.path)  # of a write that a SIGKILL interrupted
            fileio.write_json(os.path.join(self.path, "args.json"), cfg.to_dict())
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def write_metrics(self, history: list[EpochResult]) -> None:
        rows = [[f"{v:.6g}" if isinstance(v, float) else v for v in asdict(h).values()] for h in history]
        fileio.write_csv(os.path.join(self.path, "metrics.csv"), list(asdict(history[0])), rows)

    def write_summary(self, summary: dict, history: list[EpochResult], title: str) -> None:
        """summary.json and, when an epoch finished, curves.png."""
        fileio.write_json(os.path.join(self.path, "summary.json"), {**summary, "history": [asdict(h) for h in history]})
        if history:
            from cnncli.plots import plot_curves

            plot_curves(history, os.path.join(self.path, "curves.png"), title)
