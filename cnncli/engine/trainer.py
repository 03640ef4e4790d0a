"""The training loop behind `cnn train`, in named phases.

`Trainer.fit` is the table of contents: set up (data, model, optimizer, loaders), start or resume (run folder,
training state), then per epoch train, evaluate, end the epoch (best tracking, checkpoints, metrics, report) and
check the stop rules; finish (test split, summary, curves). Each phase is a method that can be run and tested
alone. It runs the same under `torchrun` (DistributedDataParallel: each rank trains on its shard, rank 0 writes
every file). The library never prints: progress goes to a `reporter(kind, info)` callback the CLI provides.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnncli import fileio
from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.config import EVAL_BATCH_MIN, SGD_MOMENTUM, RunFacts, TrainConfig, lr_at, resolve, validate
from cnncli.engine import distributed as dist_utils
from cnncli.engine.device import bf16_supported, pick_device, training_kernels
from cnncli.engine.events import Epoch, EpochResult, Event, Note, Start, Step
from cnncli.errors import UsageError, WorkFailed, reading, shown


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


SYNC_EVERY = 32  # training steps between the host's reads of the running loss and accuracy


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
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _uses_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def _optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases and normalization scales."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


class Trainer:
    def __init__(self, cfg: TrainConfig, reporter: Callable[[Event], None] | None = None, resume: str | None = None):
        self.report = reporter or (lambda event: None)
        self.resume_from: Checkpoint | None = None
        self.run_dir: str | None = None
        if resume:
            cfg = self._resume_config(cfg, resolve_resume(resume))
        self.cfg = validate(cfg)  # bad usage fails in a moment, before any data is loaded
        self.dist = dist_utils.setup(self.cfg.device)
        self.device = self.dist.device if self.dist.enabled else pick_device(self.cfg.device)
        self.is_main = self.dist.rank == 0

    def _resume_config(self, request: TrainConfig, last_pt: str) -> TrainConfig:
        """The saved run's config; `--device` and `--epochs` given with `--resume` override it."""
        from cnncli.models import is_user_model

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
        self.resume_from = ckpt
        self.run_dir = os.path.dirname(os.path.abspath(last_pt))
        return saved

    # ------------------------------------------------------------------------------------- the table of contents
    def fit(self) -> TrainResult:
        self.setup()
        state = self.start_or_resume()  # takes the run folder's lock: one writer per run
        stopped = "completed"
        with self.holding_run(), stop_on_signals() as stop:
            while state.epoch < self.cfg.epochs:
                train_metrics = self.train_one_epoch(state, stop)
                val = self.evaluate(self.val_loader)
                self.end_epoch(state, train_metrics, val)
                if stop:
                    raise Interrupted(self.run_dir)
                stopped = self.stop_reason(state)
                if stopped != "completed":
                    break
            return self.finish(state, stopped)

    @contextmanager
    def holding_run(self):
        """The run folder's lock, released however training ends (an error, a signal, the end)."""
        try:
            yield
        finally:
            if getattr(self, "lock", None) is not None:
                self.lock.release()

    # ------------------------------------------------------------------------------------------------ set up
    def setup(self) -> None:
        """Data, the concrete config, model, optimizer and loaders."""
        from cnncli.data import load_dataset

        _seed_everything(self.cfg.seed, self.cfg.deterministic)
        training_kernels(self.device, self.cfg.deterministic)  # TF32, cuDNN autotuning (CUDA only)
        # the whole small-image dataset as one uint8 tensor on the device (folders stream from disk)
        img = tuple(self.cfg.img_size) if self.cfg.img_size else None
        self.data = load_dataset(self.cfg.data, self.cfg.data_dir, image_size=img)
        if "train" not in self.data.splits:
            raise UsageError(
                f"{self.cfg.data} has no train/ folder (only {', '.join(self.data.splits)}/)",
                "training needs PATH/train/CLASS/*.png or PATH/CLASS/*.png; cnn eval measures the rest",
            )
        if self.is_main:
            for note in getattr(self.data, "notes", ()):
                self.report(Note(note))
        facts = RunFacts(
            self.data.epochs,
            self.data.batch_size,
            self.data.num_classes,
            self.device.type,
            bf16_supported(self.device),
            self.dist.world_size,
            self.data.num_samples("train"),
        )
        self.cfg = resolve(self.cfg, facts)
        self.local_batch = self.cfg.batch_size // self.dist.world_size
        if self.dist.enabled and self.is_main:
            self.report(
                Note(
                    message=f"global batch {self.cfg.batch_size} split across {self.dist.world_size} "
                    f"ranks: {self.local_batch} per rank"
                )
            )
        self._build_model()
        self.optimizer = _optimizer(self.model, self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "16")
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.train_loader = self._loader("train", train=True)
        self.val_loader = self._loader("val", train=False)
        if len(self.train_loader) == 0:
            raise UsageError(
                f"batch size {self.cfg.batch_size} is larger than the training set", "use a smaller --batch-size"
            )
        self.total_steps = self.cfg.epochs * len(self.train_loader)
        if self.cfg.max_steps:
            self.total_steps = min(self.total_steps, self.cfg.max_steps)

    def _build_model(self) -> None:
        from cnncli.models import build_model
        from cnncli.models import resolve as resolve_model
        from cnncli.models.open import probe
        from cnncli.models.transfer import transfer_weights

        info = resolve_model(self.cfg.model)
        c, h, w = self.data.input_size
        self.spec = ModelSpec(
            info.qualified if info.source != "file" else self.cfg.model,
            self.cfg.num_classes,
            c,
            (h, w),
            self.resume_from.model.build_size if self.resume_from else None,
        )
        weights = None
        if self.cfg.weights and self.resume_from is None:  # a resumed run has its weights in last.pt
            weights = self._read_weights()
        torch.manual_seed(self.cfg.seed)  # the same initial weights on every rank
        model = build_model(self.spec)
        if weights is not None:
            done = transfer_weights(model, weights[0], self.cfg.weights)
            self.report(
                Note(message=f"weights from {self.cfg.weights}{weights[1]}{self._layout_note()}: {done.summary()}")
            )
        out = probe(model.eval(), self.spec.input_size)
        if out.dim() != 2 or out.shape[1] != self.spec.num_classes:  # fails here, before any file is written
            raise UsageError(
                f"{self.spec.name} returns {tuple(out.shape)} for one image, not [1, "
                f"{self.spec.num_classes}] class scores",
                "forward() must return the logits",
            )
        self.channels_last = self.cfg.channels_last and _uses_conv(model)
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model  # the plain model: checkpoints always hold its state dict
        forward_model = model
        if self.dist.enabled:
            forward_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.cfg.compile:
            forward_model = torch.compile(forward_model)
        self.forward_model = forward_model

    def _read_weights(self) -> tuple[dict, str]:
        """--weights: the file's state dict. The weights decide the layout, as everywhere: a built-in model whose
        layout follows the image size (resnet18's CIFAR stem below 96 px) is built the way the weights were, when the
        file fits the architecture that way (classes aside)."""
        from cnncli.models import resolve as resolve_model
        from cnncli.models.detect import fit_named
        from cnncli.models.files import read_model_file, weights_of

        state, where = weights_of(read_model_file(self.cfg.weights, trust_pickle=self.cfg.trust_pickle))
        if resolve_model(self.spec.name).source == "builtin":
            try:
                fit = fit_named(self.spec.name, state, self.spec.input_size)
            except UsageError:  # another architecture: whatever fits is loaded into the default layout
                fit = None
            if fit is not None and tuple(fit.build_size) != tuple(self.spec.image_size):
                self.spec = replace(self.spec, build_size=tuple(fit.build_size))
        return state, where

    def _layout_note(self) -> str:
        b = self.spec.build_size
        return f"; layout built for {b[0]}x{b[1]}, as the weights are" if b else ""

    def _loader(self, split: str, *, train: bool):
        """A split's batches on the device; evaluation batches are at least EVAL_BATCH_MIN."""
        from cnncli.data import make_loader

        batch = self.local_batch if train else max(self.local_batch, EVAL_BATCH_MIN)
        return make_loader(
            self.data,
            split,
            batch_size=batch,
            train=train,
            seed=self.cfg.seed,
            device=self.device,
            channels_last=self.channels_last,
            workers=self.cfg.workers,
            rank=self.dist.rank,
            world_size=self.dist.world_size,
        )

    # --------------------------------------------------------------------------------------- start or resume
    def start_or_resume(self) -> TrainState:
        """A new run folder (never an existing one) with args.json, or the resumed run's state."""
        if self.resume_from is not None:
            state = self._restore(self.resume_from)
        else:
            state = TrainState()
            self.run_dir = dist_utils.broadcast_str(
                next_run_dir(self.cfg.project, self.cfg.name) if self.is_main else ""
            )
        self.last_path = os.path.join(self.run_dir, "last.pt")
        self.best_path = os.path.join(self.run_dir, "best.pt")
        if self.is_main:
            fileio.check_output_folder(self.run_dir, "run folder")
            os.makedirs(self.run_dir, exist_ok=True)
            # one writer per run: a second `--resume` of the same run (or a run racing for its name) is refused
            self.lock = fileio.FolderLock(self.run_dir).acquire()
            try:
                fileio.remove_stale_temp_files(self.run_dir)  # of a write that a SIGKILL interrupted
                fileio.write_json(os.path.join(self.run_dir, "args.json"), self.cfg.to_dict())
            except BaseException:
                self.lock.release()
                raise
        resumed = (state.epoch, state.step_in_epoch) if self.resume_from is not None else None
        self.report(
            Start(
                run_dir=self.run_dir,
                device=str(self.device),
                precision=self.cfg.precision,
                model=self.spec.name,
                data=self.cfg.data,
                epochs=self.cfg.epochs,
                batch_size=self.cfg.batch_size,
                steps_per_epoch=len(self.train_loader),
                input=list(self.data.input_size),
                resumed_at=resumed,
                train_samples=self.train_loader.num_samples * self.dist.world_size,
            )
        )
        return state

    def _restore(self, ckpt: Checkpoint) -> TrainState:
        if ckpt.model != self.spec:
            raise UsageError("the checkpoint's model does not match its own arguments", "was the dataset changed?")
        t = ckpt.training
        # the boundary: the training state is read and checked here, whole, so a malformed field is exit 2 naming
        # the file, not a TypeError epochs later
        with reading(
            f"cannot resume from {shown(self.run_dir)}: its last.pt holds a malformed training state",
            "resume from an intact last.pt, or start a new run",
        ):
            self.model.load_state_dict(ckpt.state_dict)
            self.optimizer.load_state_dict(t["optimizer"])
            self.scaler.load_state_dict(t["scaler"])
            _set_rng_state(t["rng"], self.device)
            return TrainState(
                ckpt.epoch,
                ckpt.step_in_epoch,
                ckpt.global_step,
                _number(t, "best_accuracy"),
                _number(t, "epochs_without_improvement", int),
                _history(t["history"]),
                _running(t["running"]),
            )

    def checkpoint(self, state: TrainState, metrics: dict, *, training_state: bool) -> Checkpoint:
        """best.pt (weights, preprocessing, config) or, with the training state, last.pt."""
        training = None
        if training_state:
            training = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {"step": state.global_step},
                "scaler": self.scaler.state_dict(),
                "rng": _rng_state(self.device),
                "best_accuracy": state.best_accuracy,
                "epochs_without_improvement": state.stale,
                "history": [asdict(h) for h in state.history],
                "running": dict(state.running),
            }
        return Checkpoint(
            self.spec,
            self.model.state_dict(),
            self.data.preprocess,
            self.cfg.data,
            self.cfg.to_dict(),
            metrics,
            state.epoch,
            state.step_in_epoch,
            state.global_step,
            None,
            training,
        )

    # ------------------------------------------------------------------------------------------------- train
    def train_one_epoch(self, state: TrainState, stop: StopRequest) -> dict:
        """One pass over the training split (from `state.step_in_epoch` on a resume); loss and accuracy reduced
        across ranks. A stop request between steps writes a mid-epoch last.pt and raises Interrupted.

        No step waits for the device: loss, correct counts and a non-finite-loss count accumulate on the device and
        are read once every `SYNC_EVERY` steps, at the end of the epoch, and before any checkpoint (the only host
        synchronisations). Divergence is caught at the next read, before anything is written: last.pt keeps the
        last good state."""
        self.train_loader.set_epoch(state.epoch)
        self.model.train()
        self.forward_model.train()
        sums = state.running or {"loss": 0.0, "correct": 0.0, "n": 0.0}
        state.running = sums
        pending = torch.zeros(3, device=self.device)  # loss * n, correct, non-finite losses since the last read
        steps, first = len(self.train_loader), state.step_in_epoch
        seen, t0, since, pending_n = 0, time.perf_counter(), first, 0
        for step, (x, y) in enumerate(self.train_loader.batches(first), start=first):
            lr = self._train_step(x, y, pending, state)
            seen += len(y)
            pending_n += len(y)
            state.step_in_epoch = step + 1
            out_of_steps = self.cfg.max_steps is not None and state.global_step >= self.cfg.max_steps
            # every rank reads at the same steps (a collective must not wait for a rank that will never join it)
            at_read = (step + 1) % SYNC_EVERY == 0 or step + 1 == steps or out_of_steps
            stopping = bool(stop) and not self.dist.enabled
            if at_read or stopping:
                self._read_pending(pending, pending_n, sums, state, since, step)
                since, pending_n = step + 1, 0
                if at_read:
                    stopping = dist_utils.any_flag(bool(stop), self.device)
            self.report(
                Step(
                    epoch=state.epoch,
                    step=step + 1,
                    steps=steps,
                    lr=lr,
                    loss=sums["loss"] / sums["n"] if sums["n"] else None,
                    accuracy=sums["correct"] / sums["n"] if sums["n"] else None,
                    images_per_second=seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9),
                )
            )
            if stopping and step + 1 < steps and not out_of_steps:
                if self.is_main:
                    self.checkpoint(state, {}, training_state=True).save(self.last_path)
                raise Interrupted(self.run_dir)
            if out_of_steps:
                break
        seconds = time.perf_counter() - t0
        state.train_images += seen * self.dist.world_size
        state.train_seconds += seconds
        loss, correct, n = dist_utils.all_reduce_sums([sums["loss"], sums["correct"], sums["n"]], self.device)
        return {
            "loss": loss / max(n, 1),
            "accuracy": correct / max(n, 1),
            "seconds": seconds,
            "images_per_second": seen * self.dist.world_size / max(seconds, 1e-9),
        }

    def _read_pending(
        self, pending: torch.Tensor, n: int, sums: dict, state: TrainState, first: int, last: int
    ) -> None:
        """Move the device's running sums to the host (one synchronisation); a non-finite loss since the last read
        stops the run before anything is written."""
        loss, correct, bad = pending.tolist()
        pending.zero_()
        if bad:
            kept = (
                f"the last good checkpoint stays in {self.last_path}"
                if os.path.exists(self.last_path)
                else "no checkpoint was written"
            )
            where = f"step {last + 1}" if first == last else f"steps {first + 1}-{last + 1}"
            raise WorkFailed(
                f"training diverged: the loss became inf or nan at epoch {state.epoch + 1}, {where}",
                f"{kept}; try a lower --lr",
            )
        sums["loss"] += loss
        sums["correct"] += correct
        sums["n"] += n

    def _train_step(self, x, y, pending: torch.Tensor, state: TrainState) -> float:
        """One optimizer step at the schedule's learning rate. Nothing here reads a value back from the device:
        the step's loss, correct count and finiteness are added to `pending`."""
        lr = lr_at(state.global_step, self.total_steps, self.cfg.lr, self.cfg.schedule)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with _autocast(self.device, self.cfg.precision):
            logits = self.forward_model(x)
            loss = self.criterion(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        state.global_step += 1
        with torch.no_grad():
            loss = loss.detach().float()
            pending += torch.stack(
                (loss * len(y), (logits.argmax(1) == y).sum().float(), (~torch.isfinite(loss)).float())
            )
        return lr

    # ---------------------------------------------------------------------------------------------- evaluate
    @torch.no_grad()
    def evaluate(self, loader) -> dict:
        """Loss and top-1 over a loader, reduced across ranks. BatchNorm in eval mode (running statistics), and the
        precision `cnn eval` uses (`evaluation_precision`: fp32, no TF32), so the figures a run reports are the ones
        `cnn eval` reproduces. Sums stay on the device until the end."""
        from cnncli.engine.device import evaluation_precision

        self.model.eval()
        totals = torch.zeros(2, dtype=torch.float64 if self.device.type != "mps" else torch.float32, device=self.device)
        n = 0
        with evaluation_precision(self.device):
            for x, y in loader:
                logits = self.model(x).float()
                totals += torch.stack(
                    (F.cross_entropy(logits, y, reduction="sum"), (logits.argmax(1) == y).sum().float())
                ).to(totals.dtype)
                n += len(y)
        loss_sum, correct = totals.tolist()
        loss_sum, correct, n = dist_utils.all_reduce_sums([loss_sum, correct, n], self.device)
        return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1)}

    # --------------------------------------------------------------------------------------------- end epoch
    def end_epoch(self, state: TrainState, train: dict, val: dict) -> bool:
        """Best tracking, last.pt (and best.pt when better), metrics.csv, the epoch's report. True if improved."""
        state.epoch, state.step_in_epoch, state.running = state.epoch + 1, 0, {}
        result = EpochResult(
            state.epoch,
            train["loss"],
            train["accuracy"],
            val["loss"],
            val["accuracy"],
            lr_at(state.global_step, self.total_steps, self.cfg.lr, self.cfg.schedule),
            train["images_per_second"],
            train["seconds"],
        )
        state.history.append(result)
        improved = val["accuracy"] > state.best_accuracy
        state.best_accuracy = max(state.best_accuracy, val["accuracy"])
        state.stale = 0 if improved else state.stale + 1
        if self.is_main:
            metrics = {
                "val_accuracy": val["accuracy"],
                "val_loss": val["loss"],
                "train_loss": train["loss"],
                "train_accuracy": train["accuracy"],
            }
            # checkpoints first: metrics.csv is rebuilt from last.pt's history on resume
            self.checkpoint(state, metrics, training_state=True).save(self.last_path)
            if improved:
                self.checkpoint(state, metrics, training_state=False).save(self.best_path)
            self._write_metrics(state.history)
        self.report(Epoch(**asdict(result), best=improved, epochs=self.cfg.epochs))
        return improved

    def stop_reason(self, state: TrainState) -> str:
        """completed (go on, or the last epoch is done), max_steps or patience."""
        if self.cfg.max_steps is not None and state.global_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.patience is not None and state.stale >= self.cfg.patience:
            return "patience"
        return "completed"

    def _write_metrics(self, history: list[EpochResult]) -> None:
        rows = [[f"{v:.6g}" if isinstance(v, float) else v for v in asdict(h).values()] for h in history]
        fileio.write_csv(os.path.join(self.run_dir, "metrics.csv"), list(asdict(history[0])), rows)

    # ------------------------------------------------------------------------------------------------ finish
    def finish(self, state: TrainState, stopped: str) -> TrainResult:
        """The test split with the best weights, summary.json and curves.png."""
        test_acc = self._test_accuracy()
        result = TrainResult(
            self.run_dir,
            self.best_path,
            len(state.history),
            max(state.best_accuracy, 0.0),
            state.history[-1].val_accuracy if state.history else 0.0,
            state.train_images / max(state.train_seconds, 1e-9),
            str(self.device),
            self.cfg.precision,
            test_acc,
            stopped,
            list(state.history),
        )
        if self.is_main:
            fileio.write_json(
                os.path.join(self.run_dir, "summary.json"),
                {
                    **result.as_json(),
                    "model": self.spec.name,
                    "data": self.cfg.data,
                    "history": [asdict(h) for h in state.history],
                },
            )
            if state.history:
                from cnncli.engine.plots import plot_curves

                plot_curves(
                    state.history, os.path.join(self.run_dir, "curves.png"), f"{self.spec.name} on {self.cfg.data}"
                )
        return result

    def _test_accuracy(self) -> float | None:
        if not (os.path.exists(self.best_path) or not self.is_main):
            return None
        if self.is_main:
            self.model.load_state_dict(Checkpoint.load(self.best_path).state_dict)
        dist_utils.broadcast_model(self.model)
        if "test" not in self.data.splits:
            return None
        return self.evaluate(self._loader("test", train=False))["accuracy"]


def train(cfg: TrainConfig, reporter=None, resume: str | None = None) -> TrainResult:
    """Run a training job (single process or one rank of a torchrun job)."""
    trainer = Trainer(cfg, reporter, resume)
    try:
        return trainer.fit()
    finally:
        dist_utils.teardown()
