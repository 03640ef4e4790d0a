"""The training loop behind `cnn train`, in named phases.

`Trainer.fit` is the table of contents: set up (data, model, optimizer, loaders), start or resume (run folder,
training state), then per epoch train, evaluate, end the epoch (best tracking, checkpoints, metrics, report) and
check the stop rules; finish (test split, summary, curves). Each phase is a method that can be run and tested
alone. It runs the same under `torchrun` (DistributedDataParallel: each rank trains on its shard, rank 0 writes
every file). The library never prints: progress goes to typed events (`engine/events.py`) sent to a reporter the
CLI provides. Its parts live next door: `build` (the model and optimizer), `runs` (the run folder, resume,
signals), `state` (what last.pt carries).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict

import torch
import torch.nn as nn

from cnncli.checkpoint import Checkpoint
from cnncli.config import TrainConfig, lr_at, validate
from cnncli.engine import distributed as dist_utils
from cnncli.engine.build import (
    build_for_training,
    loader_for,
    optimizer_for,
    published_weights,
    seed_everything,
    starting_file,
    step_counts,
    training_data,
)
from cnncli.engine.device import pick_device, training_kernels
from cnncli.engine.events import Epoch, Event, Note, Start, Step
from cnncli.engine.runs import (  # noqa: F401  (Interrupted and the signal handling are the loop's API)
    Interrupted,
    RunFolder,
    StopRequest,
    next_run_dir,
    resolve_resume,
    resume_config,
    stop_on_signals,
)
from cnncli.engine.state import TrainResult, TrainState, indistinct_note, restore
from cnncli.engine.state import training_state as training_state_of
from cnncli.engine.steps import RunningSums, backward_in_parts, epoch_figures, evaluate_loader
from cnncli.errors import UsageError

SYNC_EVERY = 32  # training steps between the host's reads of the running loss and accuracy


class Trainer:
    def __init__(self, cfg: TrainConfig, reporter: Callable[[Event], None] | None = None, resume: str | None = None):
        self.report = reporter or (lambda event: None)
        self.resume_from: Checkpoint | None = None
        self.run_dir: str | None = None
        self.folder: RunFolder | None = None
        if resume:
            cfg, self.resume_from, self.run_dir = resume_config(cfg, resume)
        self.cfg = validate(cfg)  # bad usage fails in a moment, before any data is loaded
        from cnncli.engine.loggers import check_installed

        self.logger_names = check_installed(self.cfg.logger)
        self.published = published_weights(self.cfg, self.resume_from)  # a name that is not published fails here
        self.loggers = None
        self.dist = dist_utils.setup(self.cfg.device)
        self.device = self.dist.device if self.dist.enabled else pick_device(self.cfg.device)
        self.is_main = self.dist.rank == 0

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
            close_loaders(getattr(self, "train_loader", None), getattr(self, "val_loader", None))
            if self.loggers is not None:
                self.loggers.close()
            if self.folder is not None:
                self.folder.release()

    # ------------------------------------------------------------------------------------------------ set up
    def setup(self) -> None:
        """Data, the concrete config, model, optimizer and loaders."""
        seed_everything(self.cfg.seed, self.cfg.deterministic)
        training_kernels(self.device, self.cfg.deterministic)  # TF32, cuDNN autotuning (CUDA only)
        report, resumed = (self.report if self.is_main else None), self.resume_from is not None
        start = starting_file(self.cfg, self.published, resumed, self.report, progress=self.is_main)
        self.data, self.cfg, self.threads = training_data(
            self.cfg, self.device, self.dist, report, resumed, self.published
        )
        self.local_batch = self.cfg.batch_size // self.dist.world_size
        built = build_for_training(
            self.cfg, self.data.input_size, self.device, self.dist, self.resume_from, self.report, start
        )
        self.spec, self.model, self.forward_model, self.channels_last = built
        self.setup_recipe()
        self.optimizer = optimizer_for(self.model, self.cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.cfg.precision == "16")
        self.train_loader = self._loader("train", train=True)
        self.val_loader = self._loader("val", train=False)
        self.total_steps, self.warmup_steps = step_counts(self.cfg, len(self.train_loader))

    def setup_recipe(self) -> None:
        """The recipe's parts (engine/recipe.py): frozen layers, the weights' average, MixUp/CutMix, the loss."""
        from cnncli.engine.recipe import build_recipe

        self.frozen, self.ema, self.mixing, self.criterion = build_recipe(
            self.model, self.cfg, self.data, self.device, self.report if self.is_main else None
        )

    @property
    def eval_model(self) -> nn.Module:
        """What is evaluated and saved as best.pt: the weights' moving average with --ema, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def _loader(self, split: str, *, train: bool):
        """A split's batches on the device (build.loader_for)."""
        return loader_for(self.data, split, self.cfg, self.device, self.dist, self.channels_last, train=train)

    # --------------------------------------------------------------------------------------- start or resume
    def start_or_resume(self) -> TrainState:
        """A new run folder (never an existing one) with args.json, or the resumed run's state."""
        if self.resume_from is not None:
            if self.resume_from.model != self.spec:
                raise UsageError("the checkpoint's model does not match its own arguments", "was the dataset changed?")
            state = restore(
                self.resume_from, self.model, self.optimizer, self.scaler, self.device, self.run_dir, self.ema
            )
        else:
            state = TrainState()
            self.run_dir = dist_utils.broadcast_str(
                next_run_dir(self.cfg.project, self.cfg.name) if self.is_main else ""
            )
        self.folder = RunFolder(self.run_dir)
        self.last_path, self.best_path = self.folder.last, self.folder.best
        if self.is_main:
            from cnncli.engine.loggers import Loggers

            self.loggers = Loggers(self.logger_names, self.run_dir, self.cfg)  # connected before the folder is made
            self.folder.open(self.cfg)
        self.report(self._start_event(state))
        return state

    def _start_event(self, state: TrainState) -> Start:
        resumed = (state.epoch, state.step_in_epoch) if self.resume_from is not None else None
        c = self.cfg
        return Start(
            *(self.run_dir, str(self.device), c.precision, self.spec.name, c.data, c.epochs, c.batch_size),
            *(len(self.train_loader), list(self.data.input_size), resumed),
            *(self.train_loader.num_samples * self.dist.world_size, self.threads.describe() if self.threads else ""),
            *(c.lr, c.optimizer),
        )

    def checkpoint(self, state: TrainState, metrics: dict, *, training_state: bool) -> Checkpoint:
        """best.pt (weights, preprocessing, config) or, with the training state, last.pt."""
        training = training_state_of(state, self.optimizer, self.scaler, self.device) if training_state else None
        if training is not None and self.ema is not None:
            training["ema"] = self.ema.state_dict()
        # last.pt holds the weights training goes on from; best.pt the evaluated ones (the EMA's with --ema)
        weights = (self.model if training_state else self.eval_model).state_dict()
        return Checkpoint(
            *(self.spec, weights, self.data.preprocess, self.cfg.data, self.cfg.to_dict(), metrics),
            *(state.epoch, state.step_in_epoch, state.global_step, None, training),
            pretrained=self.published.record() if self.published is not None else None,
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
        self.frozen.hold()  # frozen BatchNorm layers keep their statistics
        steps, first = len(self.train_loader), state.step_in_epoch
        running = RunningSums(state.running, self.device, first)
        state.running = running.sums
        seen, t0 = 0, time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader.batches(first), start=first):
            lr = self._train_step(x, y, running, state)
            seen += len(y)
            state.step_in_epoch = step + 1
            out_of_steps = self.cfg.max_steps is not None and state.global_step >= self.cfg.max_steps
            # every rank reads at the same steps (a collective must not wait for a rank that will never join it)
            at_read = (step + 1) % SYNC_EVERY == 0 or step + 1 == steps or out_of_steps
            stopping = bool(stop) and not self.dist.enabled
            if at_read or stopping:
                running.read(state.epoch, step, self.last_path)
                if at_read:
                    stopping = dist_utils.any_flag(bool(stop), self.device)
            rate = seen * self.dist.world_size / max(time.perf_counter() - t0, 1e-9)
            self.report(Step(state.epoch, step + 1, steps, lr, running.mean("loss"), running.mean("correct"), rate))
            if stopping and step + 1 < steps and not out_of_steps:
                if self.is_main:
                    self.checkpoint(state, {}, training_state=True).save(self.last_path)
                raise Interrupted(self.run_dir)
            if out_of_steps:
                break
        return self._epoch_figures(state, running.sums, seen, time.perf_counter() - t0)

    def _epoch_figures(self, state: TrainState, sums: dict, seen: int, seconds: float) -> dict:
        return epoch_figures(state, sums, seen, seconds, self.dist.world_size, self.device)

    def _train_step(self, x, y, running: RunningSums, state: TrainState) -> float:
        """One optimizer step at the schedule's learning rate: MixUp/CutMix on the batch, its --accumulate
        micro-batches' gradients summed (each loss weighted by its share of the batch, so the sum is the whole
        batch's mean), clipped, stepped, then the moving average. Nothing here reads a value back from the device:
        the step's loss, correct count and finiteness are added to the running sums."""
        lr = self.lr_at(state.global_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        target = y
        if self.mixing:
            x, target = self.mixing(x, y, state.global_step)
        self.optimizer.zero_grad(set_to_none=True)
        backward_in_parts(self.forward_model, self.criterion, x, target, y, self.cfg, self.scaler, running, self.dist)
        if self.cfg.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        state.global_step += 1
        if self.ema is not None:
            self.ema.update(self.model, state.global_step)
        return lr

    def lr_at(self, step: int) -> float:
        return lr_at(step, self.total_steps, self.cfg.lr, self.cfg.schedule, self.warmup_steps)

    # ---------------------------------------------------------------------------------------------- evaluate
    def evaluate(self, loader) -> dict:
        """Loss and top-1 over a loader, as `cnn eval` measures them (`steps.evaluate_loader`)."""
        return evaluate_loader(self.eval_model, loader, self.device)

    # --------------------------------------------------------------------------------------------- end epoch
    def end_epoch(self, state: TrainState, train: dict, val: dict) -> bool:
        """Best tracking, last.pt (and best.pt when better), metrics.csv, the epoch's report. True if improved."""
        lr = self.lr_at(state.global_step)
        result, improved = state.close_epoch(train, val, lr)
        if self.is_main:
            metrics = {"val_accuracy": val["accuracy"], "val_loss": val["loss"]}
            metrics.update(train_loss=train["loss"], train_accuracy=train["accuracy"])
            # checkpoints first: metrics.csv is rebuilt from last.pt's history on resume
            self.checkpoint(state, metrics, training_state=True).save(self.last_path)
            if improved:
                self.checkpoint(state, metrics, training_state=False).save(self.best_path)
            self.folder.write_metrics(state.history)
            self.loggers.epoch(state.history[-1])
        self.report(Epoch(**asdict(result), best=improved, epochs=self.cfg.epochs))
        return improved

    def stop_reason(self, state: TrainState) -> str:
        """completed (go on, or the last epoch is done), max_steps or patience."""
        return state.stop_reason(self.cfg.max_steps, self.cfg.patience)

    # ------------------------------------------------------------------------------------------------ finish
    def finish(self, state: TrainState, stopped: str) -> TrainResult:
        """The test split with the best weights, summary.json and curves.png."""
        said = indistinct_note(state.history, self.data.num_samples("val"), self.last_path, self.cfg.data)
        if said and self.is_main:
            self.report(Note(said))
        test_acc = self._test_accuracy()
        device, precision = str(self.device), self.cfg.precision
        result = TrainResult.of(state, self.run_dir, self.best_path, device, precision, test_acc, stopped)
        if self.is_main:
            summary = {**result.as_json(), "model": self.spec.name, "data": self.cfg.data}
            self.folder.write_summary(summary, state.history, f"{self.spec.name} on {self.cfg.data}")
            self.loggers.finish(self.run_dir)
        return result

    def _test_accuracy(self) -> float | None:
        if not (os.path.exists(self.best_path) or not self.is_main):
            return None
        if self.is_main:
            self.eval_model.load_state_dict(Checkpoint.load(self.best_path).state_dict)
        dist_utils.broadcast_model(self.eval_model)
        # a folder without test/ has no test figure (its workers end with the pass)
        return self.evaluate(self._loader("test", train=False))["accuracy"] if "test" in self.data.splits else None


def train(cfg: TrainConfig, reporter=None, resume: str | None = None) -> TrainResult:
    """Run a training job (single process or one rank of a torchrun job)."""
    trainer = Trainer(cfg, reporter, resume)
    try:
        result = trainer.fit()
    except BaseException:
        dist_utils.teardown()
        raise
    dist_utils.teardown(finished=True)
    return result


def close_loaders(*loaders) -> None:
    """Folder loaders' worker processes end with the run (not whenever the loader is collected, which may be in the
    middle of a later command in the same process)."""
    for loader in loaders:
        if hasattr(loader, "close"):
            loader.close()
