"""What a run carries from step to step and from last.pt to a resume: the state, the result, and the training part
of a checkpoint, saved whole and restored through one checked boundary."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from cnncli.checkpoint import Checkpoint
from cnncli.engine.events import EpochResult
from cnncli.errors import reading, shown


@dataclass
class TrainResult:
    run_dir: str
    best_checkpoint: str
    epochs: int
    best_accuracy: float
    final_accuracy: float
    images_per_second: float
    device: str
    precision: str
    test_accuracy: float | None = None
    stopped: str = "completed"  # completed | patience | max_steps
    history: list[EpochResult] = field(default_factory=list)

    def as_json(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d

    @classmethod
    def of(cls, state: TrainState, run_dir: str, best: str, device: str, precision: str, test_accuracy, stopped: str):
        """A finished run's figures from its state."""
        last = state.history[-1].val_accuracy if state.history else 0.0
        speed = state.train_images / max(state.train_seconds, 1e-9)
        best_acc = max(state.best_accuracy, 0.0)
        return cls(
            run_dir,
            best,
            len(state.history),
            best_acc,
            last,
            speed,
            device,
            precision,
            test_accuracy,
            stopped,
            list(state.history),
        )


@dataclass
class TrainState:
    """Everything that changes while a run trains: created in one place, saved in last.pt, restored on resume."""

    epoch: int = 0  # epochs finished
    step_in_epoch: int = 0  # batches of the current epoch already trained (a mid-epoch resume)
    global_step: int = 0  # optimizer steps
    best_accuracy: float = -1.0
    stale: int = 0  # epochs without a better validation accuracy
    history: list[EpochResult] = field(default_factory=list)
    running: dict = field(default_factory=dict)  # the current epoch's sums: loss, correct, n
    train_images: int = 0  # this process's throughput figures (not saved)
    train_seconds: float = 0.0

    def close_epoch(self, train: dict, val: dict, lr: float) -> tuple[EpochResult, bool]:
        """The epoch is done: its record in the history, best and patience tracking. (record, improved): improved =
        a validation accuracy at least as good as the best so far (best.pt is written): a tie goes to the later
        epoch, trained longer and, under the schedules' decay, at a lower learning rate. On a small validation split
        the accuracy saturates while the learning rate is still high, and the first epoch to reach it is not the
        annealed one (measured: docs/train.md, small folders). A tie is not broken by the lower validation loss: on
        7 validation images a high-rate epoch's loss was 0.0 and it tested at 67% against 100% for the last epoch.
        Patience counts epochs without a better accuracy only."""
        self.epoch, self.step_in_epoch, self.running = self.epoch + 1, 0, {}
        result = EpochResult(
            self.epoch,
            train["loss"],
            train["accuracy"],
            val["loss"],
            val["accuracy"],
            lr,
            train["images_per_second"],
            train["seconds"],
        )
        self.history.append(result)
        better = val["accuracy"] > self.best_accuracy
        improved = val["accuracy"] >= self.best_accuracy
        self.best_accuracy = max(self.best_accuracy, val["accuracy"])
        self.stale = 0 if better else self.stale + 1
        return result, improved

    def stop_reason(self, max_steps: int | None, patience: int | None) -> str:
        """completed (go on, or the last epoch is done), max_steps or patience."""
        if max_steps is not None and self.global_step >= max_steps:
            return "max_steps"
        if patience is not None and self.stale >= patience:
            return "patience"
        return "completed"


def indistinct_best(history: list[EpochResult], n_val: int) -> tuple[EpochResult, EpochResult, float] | None:
    """(best.pt's epoch, the last epoch, one standard error) when best.pt is an earlier epoch than the last and
    validation cannot tell them apart: their accuracies differ by at most one standard error of the difference of
    two accuracies on `n_val` images. On a small validation split (36-48 images: +-4 points) best.pt is then often
    a lucky epoch at a high learning rate, and the last, annealed epoch tests better (digits, benchmarks/
    small_folders.py: best.pt 92.50%, last.pt 98.17% over 5 seeds). best.pt stays the best validation accuracy;
    the run says so, and which file to compare. None otherwise."""
    if len(history) < 2 or n_val <= 0:
        return None
    top = max(h.val_accuracy for h in history)
    best = [h for h in history if h.val_accuracy == top][-1]  # a tie goes to the later epoch (close_epoch)
    last = history[-1]
    if best is last:
        return None
    se = math.sqrt((top * (1 - top) + last.val_accuracy * (1 - last.val_accuracy)) / n_val)
    return (best, last, se) if top - last.val_accuracy <= se else None


def indistinct_note(history: list[EpochResult], n_val: int, last_pt: str, data: str) -> str | None:
    """What a run says at its end when validation cannot tell best.pt from the last epoch (`indistinct_best`)."""
    close = indistinct_best(history, n_val)
    if close is None:
        return None
    best, last, se = close
    return (
        f"best.pt is epoch {best.epoch} (val {best.val_accuracy:.2%}), the last epoch {last.epoch} has "
        f"{last.val_accuracy:.2%}: on {n_val:,} validation images that is within one standard error "
        f"({se * 100:.1f} points), so validation cannot tell them apart; last.pt holds the annealed weights: "
        f"compare both on other images (cnn eval {last_pt} --data {data})"
    )


def training_state(state: TrainState, optimizer, scaler, device: torch.device) -> dict:
    """The part of last.pt that best.pt does not have: everything needed to continue the run exactly."""
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": state.global_step},
        "scaler": scaler.state_dict(),
        "rng": _rng_state(device),
        "best_accuracy": state.best_accuracy,
        "epochs_without_improvement": state.stale,
        "history": [asdict(h) for h in state.history],
        "running": dict(state.running),
    }


def restore(
    ckpt: Checkpoint, model: nn.Module, optimizer, scaler, device: torch.device, run_dir: str, ema=None
) -> TrainState:
    """Load last.pt's weights and training state into the run. The boundary: the training state is read and checked
    here, whole, so a malformed field is exit 2 naming the file, not a TypeError epochs later."""
    t = ckpt.training
    with reading(
        f"cannot resume from {shown(run_dir)}: its last.pt holds a malformed training state",
        "resume from an intact last.pt, or start a new run",
    ):
        model.load_state_dict(ckpt.state_dict)
        optimizer.load_state_dict(t["optimizer"])
        scaler.load_state_dict(t["scaler"])
        _set_rng_state(t["rng"], device)
        if ema is not None:
            ema.load_state_dict(t["ema"])
        return TrainState(
            ckpt.epoch,
            ckpt.step_in_epoch,
            ckpt.global_step,
            _number(t, "best_accuracy"),
            _number(t, "epochs_without_improvement", int),
            _history(t["history"]),
            _running(t["running"]),
        )


def _number(t: dict, key: str, kind=float):
    v = t[key]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or (kind is int and v != int(v)):
        raise TypeError(f"{key!r} is {type(v).__name__} {str(v)[:40]}, not a number")
    return kind(v)


def _history(rows) -> list[EpochResult]:
    if not isinstance(rows, list) or not all(isinstance(h, dict) for h in rows):
        raise TypeError("'history' is not a list of epoch records")
    out = [EpochResult(**h) for h in rows]
    for h in out:
        for name, value in asdict(h).items():
            _number({name: value}, name)
    return out


def _running(sums) -> dict:
    """A partial epoch's sums: empty, or loss/correct/n numbers."""
    if sums in (None, {}):
        return {}
    if not isinstance(sums, dict) or set(sums) != {"loss", "correct", "n"}:
        raise TypeError("'running' is not the partial epoch's sums (loss, correct, n)")
    return {k: _number(sums, k) for k in ("loss", "correct", "n")}


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), None))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
