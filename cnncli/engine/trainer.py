"""The training loop behind `cnn train`.

Reads top to bottom: config, data, model, optimizer and schedule, loop, evaluation, checkpoint. It runs the
same under `torchrun` (DistributedDataParallel: each rank trains on its shard, rank 0 writes everything).
The library never prints through Rich: progress goes to a `reporter` callback the CLI provides.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnncli.engine import distributed as dist_utils
from cnncli.engine.checkpoint import load_checkpoint, model_spec, save_checkpoint
from cnncli.engine.device import pick_device, pick_precision
from cnncli.errors import UsageError, WorkFailed


@dataclass
class TrainConfig:
    """Everything that defines a run; stored in args.json and every checkpoint so the run can be rebuilt."""

    model: str = "lenet5"
    data: str = "digits"
    data_dir: str | None = None          # default: $CNN_DATA_DIR or ~/.cache/cnncli/data
    epochs: int | None = None            # default: per dataset (lines 4, digits 40, cifar10 30, ...)
    batch_size: int | None = None        # global batch size (split across ranks under torchrun)
    lr: float | None = None              # default: 0.1 for SGD (x batch/256 above 256), 2e-3 for AdamW
    optimizer: str = "sgd"               # sgd (Nesterov momentum 0.9) | adamw
    schedule: str = "onecycle"           # onecycle | cosine | none
    weight_decay: float | None = None    # default: 5e-4 for SGD, 0.05 for AdamW
    label_smoothing: float = 0.1
    precision: str = "auto"              # auto | 32 | bf16 | 16
    channels_last: bool = True           # NHWC is faster for convolutions on CPU (oneDNN) and tensor cores
    compile: bool = False
    seed: int = 0
    deterministic: bool = False
    workers: int = 2                     # DataLoader workers for folder datasets
    patience: int | None = None          # stop after this many epochs without a better val accuracy
    max_steps: int | None = None         # stop after this many optimizer steps (quick runs, tests)
    project: str = "runs"
    name: str = "train"
    device: str = "auto"
    img_size: list[int] | None = None    # folder datasets: resize to HxW (default: the images' own size)
    num_classes: int | None = None       # default: the dataset's

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EpochResult:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    images_per_second: float
    seconds: float


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
    stopped: str = "completed"           # completed | patience | max_steps | interrupted
    history: list[EpochResult] = field(default_factory=list)

    def as_json(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: last.pt has been written and the run can be resumed."""

    def __init__(self, run_dir: str):
        super().__init__(run_dir)
        self.run_dir = run_dir


def next_run_dir(project: str, name: str) -> str:
    """PROJECT/NAME, or NAME2, NAME3... when it exists: an earlier run is never overwritten."""
    base = os.path.join(project, name)
    if not os.path.exists(base):
        return base
    i = 2
    while os.path.exists(f"{base}{i}"):
        i += 1
    return f"{base}{i}"


def _lr_at(step: int, total: int, base_lr: float, schedule: str) -> float:
    """Learning rate as a pure function of the step, so resuming needs only the step count."""
    if schedule == "none" or total <= 0:
        return base_lr
    t = min(step / total, 1.0)
    if schedule == "cosine":
        warm = min(0.05, 200 / max(total, 1))
        if t < warm:
            return base_lr * t / warm
        return base_lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))
    # one-cycle (Smith): linear warm-up from lr/25 over the first 25%, cosine down to lr/1e4
    if t < 0.25:
        return base_lr / 25 + (base_lr - base_lr / 25) * t / 0.25
    return base_lr / 1e4 + (base_lr - base_lr / 1e4) * 0.5 * (1 + math.cos(math.pi * (t - 0.25) / 0.75))


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


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:
        torch.backends.cudnn.benchmark = True


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def resolve_resume(path: str) -> str:
    """A run folder or a checkpoint -> the last.pt to resume from."""
    if os.path.isdir(path):
        path = os.path.join(path, "last.pt")
    if not os.path.exists(path):
        raise UsageError(f"nothing to resume at {path}", "give a run folder with last.pt, e.g. runs/train")
    return path


class Trainer:
    def __init__(self, cfg: TrainConfig, reporter: Callable[[str, dict], None] | None = None,
                 resume: str | None = None):
        self.report = reporter or (lambda kind, info: None)
        self.resume_ckpt = None
        if resume:
            ckpt_path = resolve_resume(resume)
            self.resume_ckpt = load_checkpoint(ckpt_path)
            if "optimizer" not in self.resume_ckpt:
                raise UsageError(f"{ckpt_path} has no training state", "resume from last.pt, not best.pt")
            saved = TrainConfig.from_dict(self.resume_ckpt["args"])
            saved.device = cfg.device if cfg.device != "auto" else saved.device
            if cfg.epochs:  # --epochs with --resume extends (or shortens) the run
                saved.epochs = cfg.epochs
            cfg = saved
            self.run_dir = os.path.dirname(os.path.abspath(ckpt_path))
        self.cfg = cfg
        self._validate()
        self.dist = dist_utils.setup(cfg.device)
        self.device = self.dist.device if self.dist.enabled else pick_device(cfg.device, quiet=True)
        self.is_main = self.dist.rank == 0

    def _validate(self) -> None:
        """Cheap checks first, so bad usage fails in a moment, before any data is loaded."""
        from cnncli.data.datasets import DATASETS
        from cnncli.models import resolve

        cfg = self.cfg
        if cfg.optimizer not in ("sgd", "adamw"):
            raise UsageError(f"unknown optimizer {cfg.optimizer!r}", "use sgd or adamw")
        if cfg.schedule not in ("onecycle", "cosine", "none"):
            raise UsageError(f"unknown schedule {cfg.schedule!r}", "use onecycle, cosine or none")
        if cfg.precision not in ("auto", "32", "bf16", "16", "fp32", "fp16"):
            raise UsageError(f"unknown precision {cfg.precision!r}", "use auto, 32, bf16 or 16")
        if not cfg.data.startswith("folder:") and cfg.data.lower() not in DATASETS:
            from cnncli.data import load_dataset

            load_dataset(cfg.data)  # raises the unknown-dataset error with suggestions
        resolve(cfg.model)

    # ------------------------------------------------------------------------------------------ setup
    def _setup(self) -> None:
        from cnncli.data import load_dataset, make_loader
        from cnncli.models import get_model, resolve

        cfg = self.cfg
        _seed_everything(cfg.seed, cfg.deterministic)
        # data: the whole small-image dataset as one uint8 tensor on the device
        img = tuple(cfg.img_size) if cfg.img_size else None
        self.data = load_dataset(cfg.data, cfg.data_dir, image_size=img)
        c, h, w = self.data.input_size
        epochs = cfg.epochs or self.data.epochs
        batch = cfg.batch_size or self.data.batch_size
        if batch < self.dist.world_size:
            raise UsageError(f"batch size {batch} is smaller than the {self.dist.world_size} processes")
        self.local_batch = batch // self.dist.world_size
        if self.dist.enabled and self.is_main:
            self.report("note", {"message": f"global batch {batch} split across {self.dist.world_size} ranks: "
                                            f"{self.local_batch} per rank"})
        cfg.epochs, cfg.batch_size = epochs, batch
        num_classes = cfg.num_classes or self.data.num_classes
        info = resolve(cfg.model)
        self.model_name = info.qualified if info.source != "file" else cfg.model
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
        model = get_model(cfg.model, num_classes=num_classes, in_channels=c, image_size=(h, w))
        self.spec = model_spec(self.model_name, num_classes, c, (h, w))
        self.channels_last = cfg.channels_last and _uses_conv(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain model: checkpoints always hold its state dict
        self.precision = pick_precision(cfg.precision, self.device)

        common = dict(seed=cfg.seed, device=self.device, channels_last=self.channels_last, workers=cfg.workers)
        self.train_loader = make_loader(self.data, "train", batch_size=self.local_batch, train=True,
                                        rank=self.dist.rank, world_size=self.dist.world_size, **common)
        self.val_loader = make_loader(self.data, "val", batch_size=max(self.local_batch, 256), train=False,
                                      rank=self.dist.rank, world_size=self.dist.world_size, **common)
        if len(self.train_loader) == 0:
            raise UsageError(f"batch size {batch} is larger than the training set", "use a smaller --batch-size")

        # optimizer and schedule
        decay, no_decay = [], []
        for n_, p in model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on biases and norm scales
        if cfg.optimizer == "sgd":
            lr = cfg.lr or 0.1 * max(1.0, batch / 256)  # linear scaling above batch 256
            wd = 5e-4 if cfg.weight_decay is None else cfg.weight_decay
            self.optimizer = torch.optim.SGD([{"params": decay, "weight_decay": wd},
                                              {"params": no_decay, "weight_decay": 0.0}],
                                             lr=lr, momentum=0.9, nesterov=True)
        elif cfg.optimizer == "adamw":
            lr = cfg.lr or 2e-3
            wd = 0.05 if cfg.weight_decay is None else cfg.weight_decay
            self.optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                                {"params": no_decay, "weight_decay": 0.0}], lr=lr)
        else:
            raise UsageError(f"unknown optimizer {cfg.optimizer!r}", "use sgd or adamw")
        if cfg.schedule not in ("onecycle", "cosine", "none"):
            raise UsageError(f"unknown schedule {cfg.schedule!r}", "use onecycle, cosine or none")
        cfg.lr, cfg.weight_decay = lr, wd
        self.total_steps = epochs * len(self.train_loader)
        if cfg.max_steps:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)

        forward_model = model
        if self.dist.enabled:
            forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            forward_model = torch.compile(forward_model)
        self.forward_model = forward_model

    # ------------------------------------------------------------------------------------ checkpoints
    def _checkpoint(self, *, epoch: int, step_in_epoch: int, global_step: int, metrics: dict, training_state: bool,
                    running: dict | None = None) -> dict:
        ck = {
            "model": self.spec,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "classes": list(self.data.classes),
            "input_size": list(self.data.input_size),
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std)},
            "dataset": self.cfg.data,
            "args": asdict(self.cfg),
            "metrics": metrics,
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "global_step": global_step,
            "fcn": None,
        }
        if training_state:
            ck.update({"optimizer": self.optimizer.state_dict(), "scheduler": {"step": global_step},
                       "scaler": self.scaler.state_dict(), "rng": _rng_state(self.device),
                       "best_accuracy": self.best_acc, "epochs_without_improvement": self.stale,
                       "history": [asdict(h) for h in self.history], "running": running or {}})
        return ck

    def _restore(self) -> tuple[int, int, int, dict]:
        ck = self.resume_ckpt
        if ck["model"] != self.spec:
            raise UsageError("the checkpoint's model does not match its own arguments", "was the dataset changed?")
        self.model.load_state_dict(ck["state_dict"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scaler.load_state_dict(ck["scaler"])
        self.best_acc = ck.get("best_accuracy", -1.0)
        self.stale = ck.get("epochs_without_improvement", 0)
        self.history = [EpochResult(**h) for h in ck.get("history", [])]
        _set_rng_state(ck["rng"], self.device)
        return ck["epoch"], ck["step_in_epoch"], ck["global_step"], ck.get("running", {})

    # ---------------------------------------------------------------------------------------- the loop
    def fit(self) -> TrainResult:
        cfg = self.cfg
        self._setup()
        self.best_acc, self.stale, self.history = -1.0, 0, []
        start_epoch, start_step, global_step, running = 0, 0, 0, {}
        if self.resume_ckpt is not None:
            start_epoch, start_step, global_step, running = self._restore()
        else:
            self.run_dir = dist_utils.broadcast_str(next_run_dir(cfg.project, cfg.name) if self.is_main else "")
        if self.is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            for f in os.listdir(self.run_dir):  # temp files of a write that a SIGKILL interrupted
                if f.startswith(".") and f.endswith(".tmp"):
                    os.remove(os.path.join(self.run_dir, f))
            with open(os.path.join(self.run_dir, "args.json"), "w") as f:
                json.dump(asdict(cfg), f, indent=2)
        self.last_path = os.path.join(self.run_dir, "last.pt")
        self.best_path = os.path.join(self.run_dir, "best.pt")
        self.report("start", {"run_dir": self.run_dir, "device": str(self.device), "precision": self.precision,
                              "model": self.model_name, "data": cfg.data, "epochs": cfg.epochs,
                              "batch_size": cfg.batch_size, "steps_per_epoch": len(self.train_loader),
                              "resumed_at": (start_epoch, start_step) if self.resume_ckpt else None,
                              "train_samples": self.train_loader.num_samples * self.dist.world_size})

        stop_flag = {"signal": None}

        def on_signal(signum, frame):
            stop_flag["signal"] = signum  # finish the current step, then write last.pt and exit resumable

        old_handlers = {}
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[s] = signal.signal(s, on_signal)
            except ValueError:  # not in the main thread
                pass
        stopped = "completed"
        train_images, train_seconds = 0, 0.0
        try:
            epoch = start_epoch
            while epoch < cfg.epochs:
                self.train_loader.set_epoch(epoch)
                self.model.train()
                self.forward_model.train()
                first = start_step if epoch == start_epoch else 0
                sums = running if (epoch == start_epoch and running) else {"loss": 0.0, "correct": 0.0, "n": 0.0}
                t0 = time.perf_counter()
                seen = 0
                steps = len(self.train_loader)
                step = first
                for step, (x, y) in enumerate(self.train_loader.batches(first), start=first):
                    lr = _lr_at(global_step, self.total_steps, cfg.lr, cfg.schedule)
                    for g in self.optimizer.param_groups:
                        g["lr"] = lr
                    with _autocast(self.device, self.precision):
                        logits = self.forward_model(x)
                        loss = self.criterion(logits, y)
                    if not torch.isfinite(loss):
                        raise WorkFailed(f"training diverged: loss is {loss.item()} at epoch {epoch + 1} step {step + 1}",
                                         f"the last good checkpoint stays in {self.run_dir}; try a lower --lr")
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scaler.scale(loss).backward()
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    global_step += 1
                    bs = len(y)
                    seen += bs
                    sums["loss"] += loss.item() * bs
                    sums["correct"] += (logits.argmax(1) == y).sum().item()
                    sums["n"] += bs
                    dt = time.perf_counter() - t0
                    self.report("step", {"epoch": epoch, "step": step + 1, "steps": steps, "loss": sums["loss"] / sums["n"],
                                         "accuracy": sums["correct"] / sums["n"],
                                         "images_per_second": seen * self.dist.world_size / max(dt, 1e-9), "lr": lr})
                    out_of_steps = cfg.max_steps is not None and global_step >= cfg.max_steps
                    if dist_utils.any_flag(stop_flag["signal"] is not None, self.device) and step + 1 < steps and not out_of_steps:
                        if self.is_main:
                            save_checkpoint(self._checkpoint(epoch=epoch, step_in_epoch=step + 1, global_step=global_step,
                                                             metrics={}, training_state=True, running=sums), self.last_path)
                        raise Interrupted(self.run_dir)
                    if out_of_steps:
                        break
                seconds = time.perf_counter() - t0
                train_images += seen * self.dist.world_size
                train_seconds += seconds
                totals = dist_utils.all_reduce_sums([sums["loss"], sums["correct"], sums["n"]], self.device)
                train_loss, train_acc = totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1)

                # evaluation: BatchNorm in eval mode, or batches would be normalized by their own statistics
                val = self.evaluate(self.val_loader)
                res = EpochResult(epoch + 1, train_loss, train_acc, val["loss"], val["accuracy"],
                                  _lr_at(global_step, self.total_steps, cfg.lr, cfg.schedule),
                                  seen * self.dist.world_size / max(seconds, 1e-9), seconds)
                self.history.append(res)
                improved = val["accuracy"] > self.best_acc
                if improved:
                    self.best_acc, self.stale = val["accuracy"], 0
                else:
                    self.stale += 1
                epoch += 1
                if self.is_main:
                    metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"], "train_loss": train_loss,
                               "train_accuracy": train_acc}
                    # checkpoints first: metrics.csv is rebuilt from last.pt's history on resume
                    save_checkpoint(self._checkpoint(epoch=epoch, step_in_epoch=0, global_step=global_step,
                                                     metrics=metrics, training_state=True), self.last_path)
                    if improved:
                        save_checkpoint(self._checkpoint(epoch=epoch, step_in_epoch=0, global_step=global_step,
                                                         metrics=metrics, training_state=False), self.best_path)
                    self._write_metrics()
                self.report("epoch", {**asdict(res), "best": improved, "epochs": cfg.epochs})
                if stop_flag["signal"] is not None:
                    stopped = "interrupted"
                    raise Interrupted(self.run_dir)
                if cfg.max_steps is not None and global_step >= cfg.max_steps:
                    stopped = "max_steps"
                    break
                if cfg.patience is not None and self.stale >= cfg.patience:
                    stopped = "patience"
                    break
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)

        # the test split, evaluated with the best weights
        test_acc = None
        if os.path.exists(self.best_path) or not self.is_main:
            best = load_checkpoint(self.best_path) if self.is_main else None
            if best is not None:
                self.model.load_state_dict(best["state_dict"])
            dist_utils.broadcast_model(self.model)
            test_loader = _test_loader(self)
            test_acc = self.evaluate(test_loader)["accuracy"] if test_loader is not None else None
        result = TrainResult(self.run_dir, self.best_path, len(self.history), max(self.best_acc, 0.0),
                             self.history[-1].val_accuracy if self.history else 0.0,
                             train_images / max(train_seconds, 1e-9), str(self.device), self.precision, test_acc, stopped,
                             list(self.history))
        if self.is_main:
            with open(os.path.join(self.run_dir, "summary.json"), "w") as f:
                json.dump({**result.as_json(), "model": self.model_name, "data": cfg.data,
                           "history": [asdict(h) for h in self.history]}, f, indent=2)
            self._plot()
        return result

    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Loss and top-1 over a loader, reduced across ranks."""
        self.model.eval()
        loss_sum = correct = n = 0.0
        for x, y in loader:
            with _autocast(self.device, self.precision):
                logits = self.model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
            n += len(y)
        loss_sum, correct, n = dist_utils.all_reduce_sums([loss_sum, correct, n], self.device)
        return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}

    def _write_metrics(self) -> None:
        path = os.path.join(self.run_dir, "metrics.csv")
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(list(asdict(self.history[0]).keys()))
            for h in self.history:
                w.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in asdict(h).values()])
        os.replace(tmp, path)

    def _plot(self) -> None:
        if not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ep = [h.epoch for h in self.history]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
        a.plot(ep, [h.train_loss for h in self.history], "o-", label="train")
        a.plot(ep, [h.val_loss for h in self.history], "o-", label="val")
        a.set(title="loss", xlabel="epoch")
        a.legend()
        b.plot(ep, [h.train_accuracy for h in self.history], "o-", label="train")
        b.plot(ep, [h.val_accuracy for h in self.history], "o-", label="val")
        b.set(title="accuracy", xlabel="epoch", ylim=(0, 1.01))
        b.legend()
        fig.suptitle(f"{self.model_name} on {self.cfg.data}")
        fig.tight_layout()
        fig.savefig(os.path.join(self.run_dir, "curves.png"), dpi=100)
        plt.close(fig)


def _test_loader(tr: Trainer):
    from cnncli.data import make_loader

    if "test" not in tr.data.splits:
        return None
    return make_loader(tr.data, "test", batch_size=max(tr.local_batch, 256), train=False, device=tr.device,
                       channels_last=tr.channels_last, workers=tr.cfg.workers, rank=tr.dist.rank,
                       world_size=tr.dist.world_size)


def train(cfg: TrainConfig, reporter=None, resume: str | None = None) -> TrainResult:
    """Run a training job (single process or one rank of a torchrun job)."""
    trainer = Trainer(cfg, reporter, resume)
    try:
        return trainer.fit()
    finally:
        dist_utils.teardown()
