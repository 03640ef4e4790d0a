"""The trainer's phases, the config's resolve step and the dataset registry, used as a library (no CLI)."""

import csv
import json
import os
import signal

import pytest
import torch
from conftest import run_cnn

from cnncli.checkpoint import Checkpoint
from cnncli.config import RunFacts, TrainConfig, lr_at, resolve, validate
from cnncli.data import register_dataset, tensor_dataset, unregister_dataset
from cnncli.engine.trainer import StopRequest, Trainer, stop_on_signals
from cnncli.errors import UsageError


def test_resolve_is_pure_and_decides_every_default():
    cfg = TrainConfig(model="lenet5", data="digits")
    facts = RunFacts(epochs=40, batch_size=64, num_classes=10, device_type="cpu", bf16=False)
    r = resolve(cfg, facts)
    assert (r.epochs, r.batch_size, r.lr, r.weight_decay, r.num_classes, r.precision) == (40, 64, 0.1, 5e-4, 10, "32")
    assert cfg.epochs is None and cfg.lr is None and cfg.precision == "auto"  # the request is unchanged
    assert resolve(r, facts) == r  # a resolved config (args.json, a checkpoint's args) resolves to itself
    assert resolve(TrainConfig(model="lenet5", data="digits", batch_size=512), facts).lr == pytest.approx(0.2)
    adamw = resolve(TrainConfig(model="lenet5", data="digits", optimizer="adamw"), facts)
    assert (adamw.lr, adamw.weight_decay) == (2e-3, 0.05)
    assert resolve(cfg, RunFacts(40, 64, 10, "cpu", bf16=True)).precision == "bf16"
    assert resolve(cfg, RunFacts(40, 64, 10, "cuda", bf16=False)).precision == "16"
    with pytest.raises(UsageError, match="fp16 training is for GPUs"):
        resolve(TrainConfig(model="lenet5", data="digits", precision="16"), facts)
    with pytest.raises(UsageError, match="smaller than the 4 processes"):
        resolve(TrainConfig(model="lenet5", data="digits", batch_size=2), RunFacts(40, 64, 10, world_size=4))


@pytest.mark.parametrize(
    "batch, lr",
    [(4, 0.025), (8, 0.1 * 0.125**0.5), (16, 0.05), (63, 0.1 * (63 / 64) ** 0.5), (64, 0.1), (256, 0.1), (512, 0.2)],
)
def test_the_default_sgd_rate_follows_the_batch_given_or_chosen_for_small_data(batch, lr):
    facts = RunFacts(epochs=20, batch_size=64, num_classes=3, device_type="cpu", bf16=False)
    given = resolve(TrainConfig(model="resnet18", data="folder:x", batch_size=batch), facts)
    assert given.lr == pytest.approx(lr)
    # a folder small enough that the default batch halves to `batch` gets the same rate as asking for it
    if batch in (4, 8, 16):
        small = RunFacts(
            epochs=20, batch_size=64, num_classes=3, device_type="cpu", bf16=False, train_samples=batch * 8
        )
        chosen = resolve(TrainConfig(model="resnet18", data="folder:x"), small)
        assert (chosen.batch_size, chosen.lr) == (batch, pytest.approx(lr))
    assert resolve(TrainConfig(model="resnet18", data="folder:x", batch_size=batch, lr=0.3), facts).lr == 0.3
    adamw = resolve(TrainConfig(model="resnet18", data="folder:x", batch_size=batch, optimizer="adamw"), facts)
    assert adamw.lr == 2e-3  # AdamW's default does not follow the batch


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"optimizer": "adam"}, "unknown optimizer"),
        ({"schedule": "step"}, "unknown schedule"),
        ({"precision": "int8"}, "unknown precision"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 0}, "--batch-size"),
        ({"lr": -1.0}, "--lr"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"name": "../escaped"}, "--name"),
        ({"data": "cifar11"}, "unknown dataset"),
        ({"model": "resnett"}, "unknown model"),
        ({"model": None}, "MODEL"),
    ],
)
def test_validate_holds_every_check(change, needle):
    cfg = TrainConfig(model="lenet5", data="digits")
    for k, v in change.items():
        setattr(cfg, k, v)
    with pytest.raises(UsageError, match=needle.replace("-", r"\-")):
        validate(cfg)


def test_validate_normalizes_precision_aliases():
    assert validate(TrainConfig(model="lenet5", data="digits", precision="fp32")).precision == "32"


def test_one_cycle_schedule_shape():
    lrs = [lr_at(s, 100, 0.1, "onecycle") for s in range(101)]
    assert lrs[0] == pytest.approx(0.1 / 25) and max(lrs) == pytest.approx(0.1) and lrs.index(max(lrs)) == 25
    assert lrs[-1] == pytest.approx(0.1 / 1e4)
    assert lr_at(7, 100, 0.1, "none") == 0.1


def test_stop_on_signals_turns_sigterm_into_a_request_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with stop_on_signals() as stop:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == before


def test_phases_one_by_one_on_fake(tmp_path):
    cfg = TrainConfig(
        model="mlp",
        data="fake",
        epochs=2,
        batch_size=1024,
        project=str(tmp_path),
        device="cpu",
        precision="32",
        patience=1,
    )
    tr = Trainer(cfg)
    tr.setup()
    assert (tr.cfg.epochs, tr.cfg.lr, tr.cfg.num_classes, tr.cfg.precision) == (2, 0.4, 10, "32")
    state = tr.start_or_resume()
    run = tmp_path / "train"
    with open(run / "args.json") as f:
        assert json.load(f) == tr.cfg.to_dict()  # the resolved config, not the request
    train = tr.train_one_epoch(state, StopRequest())
    steps = len(tr.train_loader)
    assert state.global_step == steps == 9000 // 1024 and state.step_in_epoch == steps
    assert train["loss"] > 0 and 0 <= train["accuracy"] <= 1
    val = tr.evaluate(tr.val_loader)
    assert set(val) == {"loss", "accuracy"}
    assert tr.end_epoch(state, train, val) is True  # the first epoch is always the best so far
    assert (state.epoch, state.step_in_epoch, state.stale) == (1, 0, 0)
    last, best = Checkpoint.load(str(run / "last.pt")), Checkpoint.load(str(run / "best.pt"))
    assert last.training["best_accuracy"] == val["accuracy"] and best.training is None and best.epoch == 1
    assert best.preprocess.classes == tuple(f"class{i}" for i in range(10))
    with open(run / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 1
    assert tr.stop_reason(state) == "completed"
    state.stale = 1  # an epoch without improvement: patience 1 stops
    assert tr.stop_reason(state) == "patience"
    # a second epoch a little below the best on ~1,000 validation images: the run says validation cannot choose
    assert tr.end_epoch(state, train, {"loss": val["loss"], "accuracy": val["accuracy"] - 0.002}) is False
    notes = []
    tr.report = lambda event: notes.append(getattr(event, "message", ""))
    result = tr.finish(state, "patience")
    assert result.stopped == "patience" and result.test_accuracy is not None
    (said,) = [m for m in notes if m.startswith("best.pt is epoch 1 ")]
    assert "the last epoch 2" in said and f"cnn eval {run / 'last.pt'} --data fake" in said
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG" and (run / "summary.json").exists()


def test_a_stop_request_mid_epoch_writes_a_resumable_last_pt(tmp_path):
    tr = Trainer(
        TrainConfig(
            model="mlp", data="fake", epochs=1, batch_size=1000, project=str(tmp_path), device="cpu", precision="32"
        )
    )
    tr.setup()
    state = tr.start_or_resume()
    stop = StopRequest()
    stop.signal = signal.SIGINT
    from cnncli.engine.trainer import Interrupted

    with pytest.raises(Interrupted):
        tr.train_one_epoch(state, stop)
    last = Checkpoint.load(str(tmp_path / "train" / "last.pt"))
    assert last.step_in_epoch == 1 and last.global_step == 1 and last.training["running"]["n"] == 1000


# ------------------------------------------------------------------------------------- a newcomer's dataset


@pytest.fixture
def colours_dataset():
    """What docs/extending.md shows: one registered function makes a dataset that every command can use."""

    @register_dataset(name="test-colours", epochs=5, batch_size=16)
    def colours(info, *, data_dir, image_size=None, download=True, arg=None):
        """Three flat colours with noise, 3x16x16."""
        g = torch.Generator().manual_seed(0)

        def make(n):
            y = torch.arange(n) % 3
            x = torch.randint(0, 60, (n, 3, 16, 16), generator=g)
            x[torch.arange(n), y] += 180  # the class's channel is bright
            return x.to(torch.uint8), y

        (tx, ty), (sx, sy) = make(300), make(60)
        return tensor_dataset(info, tx, ty, sx, sy, ["red", "green", "blue"])

    yield "test-colours"
    unregister_dataset("test-colours")


def test_a_registered_dataset_trains_and_evaluates(tmp_path, colours_dataset):
    p = run_cnn("train", "smallcnn", "--data", colours_dataset, "--project", tmp_path, "--precision", "32", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["epochs"] == 5 and out["test_accuracy"] >= 0.9
    ck = Checkpoint.load(out["best_checkpoint"])
    assert ck.preprocess.classes == ("red", "green", "blue") and ck.dataset == "test-colours"
    ev = run_cnn("eval", out["best_checkpoint"], "--json")  # the dataset recorded in the checkpoint
    assert ev.returncode == 0 and json.loads(ev.stdout)["samples"] == 60


def test_registering_a_name_twice_is_refused(colours_dataset):
    with pytest.raises(ValueError, match="registered twice"):
        register_dataset(name=colours_dataset)(lambda info, **kw: None)


def test_reported_accuracy_is_what_cnn_eval_reproduces_whatever_the_training_precision(tmp_path):
    """bf16 training (forced, so the test means the same on every CPU): the run's test accuracy is measured in
    fp32 like `cnn eval`, so the two agree exactly (they did not when evaluation ran under bf16 autocast)."""
    p = run_cnn(
        "train",
        "linenet",
        "--data",
        "lines",
        "--precision",
        "bf16",
        "--max-steps",
        "40",
        "--project",
        tmp_path,
        "--device",
        "cpu",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["precision"] == "bf16"
    ev = json.loads(run_cnn("eval", out["best_checkpoint"], "--device", "cpu", "--json", check=0).stdout)
    assert ev["samples"] == 10000 and ev["accuracy"] == out["test_accuracy"]


SYNCING = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def test_no_host_synchronisation_in_a_training_step(tmp_path, monkeypatch):
    """Every call that makes the host wait for the device (`.item()`, `bool()`, `float()`, `.tolist()`, ... on a
    tensor) is counted while the trainer runs: none inside a step, and an epoch of 70 steps reads the device only at
    its SYNC_EVERY boundaries and its end."""
    import math

    from cnncli.engine import trainer as T

    counts = {"step": 0, "epoch": 0}
    where: list[str] = []
    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            if where:
                counts[where[-1]] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)

    def inside(label, fn):
        def run(*a, **k):
            where.append(label)
            try:
                return fn(*a, **k)
            finally:
                where.pop()

        return run

    cfg = TrainConfig(
        model="smallcnn",
        data="fake",
        epochs=1,
        batch_size=16,
        max_steps=70,
        device="cpu",
        precision="32",
        project=str(tmp_path),
        name="sync",
    )
    trainer = Trainer(cfg)
    trainer.setup()
    trainer._train_step = inside("step", trainer._train_step)
    state = trainer.start_or_resume()
    steps = min(70, len(trainer.train_loader))
    metrics = inside("epoch", trainer.train_one_epoch)(state, StopRequest())
    assert counts["step"] == 0
    assert counts["epoch"] <= math.ceil(steps / T.SYNC_EVERY) + 1, counts
    assert state.global_step == steps and 0 <= metrics["accuracy"] <= 1 and math.isfinite(metrics["loss"])


def test_divergence_is_caught_at_the_next_read_and_nothing_is_written(tmp_path):
    """A loss that turns non-finite mid-interval stops the run at the next read, naming the steps, and no
    checkpoint is written from the diverged weights."""
    from cnncli.errors import WorkFailed

    cfg = TrainConfig(
        model="smallcnn",
        data="fake",
        epochs=1,
        batch_size=16,
        max_steps=40,
        device="cpu",
        precision="32",
        lr=1e6,
        optimizer="sgd",
        project=str(tmp_path),
        name="nan",
    )
    trainer = Trainer(cfg)
    trainer.setup()
    state = trainer.start_or_resume()
    with pytest.raises(WorkFailed, match=r"diverged: the loss became inf or nan at epoch 1, steps? \d+"):
        trainer.train_one_epoch(state, StopRequest())
    assert not os.path.exists(os.path.join(trainer.run_dir, "last.pt"))


def test_best_is_the_higher_accuracy_and_a_tie_goes_to_the_later_epoch():
    from cnncli.engine.state import TrainState

    state = TrainState()
    seen = []
    for acc in [0.5, 0.875, 0.875, 0.8, 0.875, 0.75]:
        train = {"loss": 1.0, "accuracy": 0.5, "images_per_second": 1.0, "seconds": 1.0}
        _, improved = state.close_epoch(train, {"accuracy": acc, "loss": 1.0}, 0.1)
        seen.append(improved)
    # a tie in accuracy goes to the later epoch (3 and 5: annealed further); a lower accuracy does not (4, 6)
    assert seen == [True, True, True, False, True, False]
    assert state.best_accuracy == 0.875
    assert state.stale == 4  # patience counts epochs without a better accuracy: ties are not


def test_the_run_says_when_validation_cannot_tell_best_from_last():
    from cnncli.engine.events import EpochResult
    from cnncli.engine.state import indistinct_best

    def history(*accs):
        return [EpochResult(i + 1, 1.0, 0.5, 1.0, a, 0.1, 1.0, 1.0) for i, a in enumerate(accs)]

    # digits, seed 3: best.pt epoch 2 at 46/48, the last epoch 45/48; one standard error of the difference 4.5 points
    best, last, se = indistinct_best(history(0.5, 46 / 48, 0.9, 45 / 48), 48)
    assert (best.epoch, last.epoch, se) == (2, 4, pytest.approx(0.0453, abs=1e-4))
    assert indistinct_best(history(0.5, 46 / 48, 0.9, 45 / 48), 5000) is None  # 2 points on 5,000 images is a gap
    assert indistinct_best(history(0.5, 47 / 48, 40 / 48), 48) is None  # 6 images below: validation can tell
    assert indistinct_best(history(0.5, 0.9, 0.9), 48) is None  # a tie: best.pt is the last epoch already
    assert indistinct_best(history(0.9), 48) is None and indistinct_best(history(0.9, 0.8), 0) is None
    # both at 100% but best.pt earlier cannot happen (a tie goes to the later epoch); 100% then 6/7 is a gap
    assert indistinct_best(history(1.0, 6 / 7), 7) is None
