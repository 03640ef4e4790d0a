"""What the trainer tells whoever watches it: typed events (Lightning's callback hooks, as data), not string-keyed
dicts. The trainer calls `report(event)`; the CLI's reporter has one method per event type (`on_start`, ...).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Note:
    """Something worth a log line (a weight transfer, the per-rank batch)."""

    message: str


@dataclass(frozen=True)
class Start:
    """The run is set up: where it writes, what it trains, how."""

    run_dir: str
    device: str
    precision: str
    model: str
    data: str
    epochs: int
    batch_size: int
    steps_per_epoch: int
    input: list
    resumed_at: tuple[int, int] | None  # (epoch, step in epoch) of a resumed run
    train_samples: int
    threads: str = ""  # the CPU thread plan, e.g. "1 thread, 1 data worker on 2 core(s)" (empty on a GPU)
    lr: float = 0.0  # the peak learning rate (the schedule's top)
    optimizer: str = ""


@dataclass(frozen=True)
class Step:
    """A training step done; loss and accuracy are None between the reads from the device."""

    epoch: int
    step: int
    steps: int
    lr: float
    loss: float | None
    accuracy: float | None
    images_per_second: float


@dataclass
class EpochResult:
    """One epoch's figures: what metrics.csv, summary.json's history and last.pt keep."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    images_per_second: float
    seconds: float


@dataclass
class Epoch(EpochResult):
    """An epoch done and validated: its figures, whether it is the best so far, and of how many epochs."""

    best: bool = False
    epochs: int = 0


Event = Note | Start | Step | Epoch


def dispatch(listener, event: Event) -> None:
    """Call `listener.on_<event type>(event)` when the listener has that method."""
    method = getattr(listener, "on_" + type(event).__name__.lower(), None)
    if method is not None:
        method(event)
