"""The device side of a training loop: precision contexts, an epoch's running sums kept on the device between reads,
and evaluation over a loader. Nothing here synchronises with the host except `RunningSums.read` and the end of
`evaluate_loader`."""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnncli.engine import distributed as dist_utils
from cnncli.errors import WorkFailed


def autocast(device: torch.device, precision: str):
    if precision == "32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def backward_in_parts(forward_model, criterion, x, target, y, cfg, scaler, running, dist) -> None:
    """The gradients of one optimizer batch, computed in --accumulate micro-batches: each part's loss is weighted by
    its share of the batch, so the summed gradient is the whole batch's mean (equal to the unsplit batch for a model
    without BatchNorm, up to rounding). Under DDP only the last part synchronises the gradients."""
    import contextlib

    parts = cfg.accumulate
    bounds = [len(y) * i // parts for i in range(parts + 1)]
    for i in range(parts):
        a, b = bounds[i], bounds[i + 1]
        sync = i == parts - 1 or not dist.enabled
        with contextlib.nullcontext() if sync else forward_model.no_sync():
            with autocast(x.device, cfg.precision):
                logits = forward_model(x[a:b])
                loss = criterion(logits, target[a:b])
            scaler.scale(loss * ((b - a) / len(y)) if parts > 1 else loss).backward()
        running.add(loss, logits, y[a:b])


def epoch_figures(state, sums: dict, seen: int, seconds: float, world_size: int, device) -> dict:
    """An epoch's training loss, accuracy and speed, reduced across ranks; the throughput counters advanced."""
    state.train_images += seen * world_size
    state.train_seconds += seconds
    loss, correct, n = dist_utils.all_reduce_sums([sums["loss"], sums["correct"], sums["n"]], device)
    return {
        "loss": loss / max(n, 1),
        "accuracy": correct / max(n, 1),
        "seconds": seconds,
        "images_per_second": seen * world_size / max(seconds, 1e-9),
    }


class RunningSums:
    """An epoch's loss, correct count and non-finite-loss count: added to on the device at every step, moved to the
    host (`sums`, saved in last.pt) only when read."""

    def __init__(self, sums: dict, device: torch.device, first_step: int):
        self.sums = sums or {"loss": 0.0, "correct": 0.0, "n": 0.0}
        self.pending = torch.zeros(3, device=device)  # loss * n, correct, non-finite losses since the last read
        self.pending_n = 0
        self.since = first_step

    @torch.no_grad()
    def add(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        loss = loss.detach().float()
        self.pending += torch.stack(
            (loss * len(y), (logits.argmax(1) == y).sum().float(), (~torch.isfinite(loss)).float())
        )
        self.pending_n += len(y)

    def read(self, epoch: int, step: int, last_path: str) -> None:
        """Move the sums to the host (one synchronisation); a non-finite loss since the last read stops the run
        before anything is written, naming the steps."""
        loss, correct, bad = self.pending.tolist()
        self.pending.zero_()
        first, self.since = self.since, step + 1
        n, self.pending_n = self.pending_n, 0
        if bad:
            kept = (
                f"the last good checkpoint stays in {last_path}"
                if os.path.exists(last_path)
                else "no checkpoint was written"
            )
            where = f"step {step + 1}" if first == step else f"steps {first + 1}-{step + 1}"
            raise WorkFailed(
                f"training diverged: the loss became inf or nan at epoch {epoch + 1}, {where}",
                f"{kept}; try a lower --lr",
            )
        self.sums["loss"] += loss
        self.sums["correct"] += correct
        self.sums["n"] += n

    def mean(self, key: str) -> float | None:
        return self.sums[key] / self.sums["n"] if self.sums["n"] else None


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, device: torch.device) -> dict:
    """Loss and top-1 over a loader, reduced across ranks. BatchNorm in eval mode (running statistics), and the
    precision `cnn eval` uses (`evaluation_precision`: fp32, no TF32), so the figures a run reports are the ones
    `cnn eval` reproduces. Sums stay on the device until the end."""
    from cnncli.engine.device import evaluation_precision

    model.eval()
    totals = torch.zeros(2, dtype=torch.float64 if device.type != "mps" else torch.float32, device=device)
    n = 0
    with evaluation_precision(device):
        for x, y in loader:
            logits = model(x).float()
            totals += torch.stack(
                (F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float())
            ).to(totals.dtype)
            n += len(y)
    loss_sum, correct = totals.tolist()
    loss_sum, correct, n = dist_utils.all_reduce_sums([loss_sum, correct, n], device)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}
