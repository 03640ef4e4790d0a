"""The fine-tuning recipe (`cnn train --freeze/--augment/--mixup/--cutmix/--ema/--accumulate/...`): each part does
what it says on real training runs, and a run stopped mid-epoch and resumed ends bit-identical to one that was not."""

import contextlib
import json

import numpy as np
import pytest
import torch
from conftest import run_cnn

from cnncli.checkpoint import Checkpoint
from cnncli.config import TrainConfig, lr_at
from cnncli.engine import trainer as trainer_mod
from cnncli.engine.runs import StopRequest
from cnncli.engine.trainer import Interrupted, train

RECIPE = {
    "augment": "trivial",
    "mixup": 0.2,
    "cutmix": 1.0,
    "ema": True,
    "accumulate": 2,
    "clip_grad": 1.0,
    "warmup_epochs": 0.5,
    "class_weights": "balanced",
    "sampler": "balanced",
}


def _cfg(tmp_path, name, **kw):
    base = {"model": "lenet", "data": "digits", "epochs": 2, "batch_size": 64, "project": str(tmp_path), "name": name}
    base.update(device="cpu", precision="32", deterministic=True, threads=2)
    return TrainConfig(**{**base, **kw})


class _StopAfter(StopRequest):
    """A stop request that arrives after `n` checks (the loop asks once per step)."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def __bool__(self):
        self.n -= 1
        return self.n < 0


def test_the_whole_recipe_stopped_mid_epoch_and_resumed_ends_bit_identical(tmp_path, monkeypatch):
    ref = train(_cfg(tmp_path, "ref", **RECIPE))
    assert ref.epochs == 2
    monkeypatch.setattr(trainer_mod, "stop_on_signals", lambda: contextlib.nullcontext(_StopAfter(25)))
    with pytest.raises(Interrupted):
        train(_cfg(tmp_path, "cut", **RECIPE))
    cut = tmp_path / "cut"
    assert Checkpoint.load(str(cut / "last.pt")).epoch == 1  # stopped in the second epoch
    monkeypatch.undo()
    train(TrainConfig(), resume=str(cut))
    for f in ("last.pt", "best.pt"):
        a, b = Checkpoint.load(str(tmp_path / "ref" / f)), Checkpoint.load(str(cut / f))
        for k, v in a.state_dict.items():
            assert torch.equal(v, b.state_dict[k]), (f, k)
    ema_a = Checkpoint.load(str(tmp_path / "ref" / "last.pt")).training["ema"]
    ema_b = Checkpoint.load(str(cut / "last.pt")).training["ema"]
    assert all(torch.equal(v, ema_b[k]) for k, v in ema_a.items())
    args = json.loads((cut / "args.json").read_text())
    assert {k: args[k] for k in RECIPE} == RECIPE  # recorded


def test_best_pt_holds_the_moving_average_not_the_raw_weights(tmp_path):
    train(_cfg(tmp_path, "e", ema=True, epochs=1))
    best = Checkpoint.load(str(tmp_path / "e" / "best.pt"))
    last = Checkpoint.load(str(tmp_path / "e" / "last.pt"))
    ema = last.training["ema"]
    assert all(torch.equal(best.state_dict[k], ema[k]) for k in ema)
    assert any(not torch.equal(last.state_dict[k], ema[k]) for k in ema)


def test_accumulated_micro_batches_equal_the_unsplit_batch(tmp_path):
    # lenet has no BatchNorm: the summed micro-batch gradients are the batch's, up to float rounding
    kw = {"augment": "none", "epochs": 1, "max_steps": 6, "label_smoothing": 0.0}
    train(_cfg(tmp_path, "one", **kw))
    train(_cfg(tmp_path, "four", accumulate=4, **kw))
    a = Checkpoint.load(str(tmp_path / "one" / "last.pt")).state_dict
    b = Checkpoint.load(str(tmp_path / "four" / "last.pt")).state_dict
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A smallcnn (BatchNorm) trained briefly on digits: the starting weights for freezing."""
    tmp = tmp_path_factory.mktemp("freeze")
    cfg = TrainConfig(model="smallcnn", data="digits", epochs=1, max_steps=4, project=str(tmp), name="s")
    train(TrainConfig(**{**cfg.to_dict(), "device": "cpu", "precision": "32", "threads": 2}))
    return str(tmp / "s" / "best.pt")


@pytest.mark.parametrize("freeze", ["backbone", "2"])
def test_frozen_tensors_and_batchnorm_statistics_stay_bit_identical(tmp_path, start, freeze):
    before = Checkpoint.load(start).state_dict
    train(_cfg(tmp_path, "f", model="smallcnn", weights=start, freeze=freeze, epochs=1, max_steps=5, lr=0.05))
    after = Checkpoint.load(str(tmp_path / "f" / "last.pt")).state_dict
    frozen = [k for k in before if not k.startswith("classifier")] if freeze == "backbone" else None
    if frozen is None:  # the first 2 top-level children: features and pool
        frozen = [k for k in before if k.startswith(("features.", "pool."))]
    trained = [k for k in before if k not in frozen and before[k].dtype.is_floating_point]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # weights, running means and variances
    assert any(not torch.equal(before[k], after[k]) for k in trained)


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--freeze", "99"], "top-level layers"),
        (["--freeze", "some"], "--freeze takes backbone"),
        (["--augment", "fancy"], "augment"),
        (["--mixup", "-1"], "--mixup"),
        (["--ema-decay", "1.5"], "--ema-decay"),
        (["--accumulate", "0"], "--accumulate"),
        (["--accumulate", "500"], "more parts than images"),
        (["--clip-grad", "0"], "--clip-grad"),
        (["--warmup-epochs", "-2"], "--warmup-epochs"),
        (["--logger", "wandb"], "unknown --logger"),
        (["--pretrained", "--weights", "IMAGENET1K_V1"], "give one of them"),
    ],
)
def test_bad_recipe_options_exit_2_before_anything_runs(tmp_path, args, needle):
    p = run_cnn("train", "lenet", "--data", "digits", "--project", tmp_path, *args)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("error:") and needle in p.stderr, p.stderr
    assert not (tmp_path / "train").exists()


def test_warmup_epochs_rise_linearly_then_decay():
    lrs = [lr_at(s, 100, 1.0, "cosine", warmup=10) for s in range(100)]
    assert lrs[:10] == pytest.approx([(s + 1) / 11 for s in range(10)])
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_balanced_sampler_draws_classes_equally_and_class_weights_are_sklearns():
    from sklearn.utils.class_weight import compute_class_weight

    from cnncli.data.loader import TensorLoader
    from cnncli.engine.recipe import balanced_class_weights, balanced_sample_weights

    y = torch.tensor([0] * 300 + [1] * 60 + [2] * 12)
    w = balanced_class_weights(y, 3)
    assert w.tolist() == pytest.approx(compute_class_weight("balanced", classes=np.arange(3), y=y.numpy()).tolist())
    x = torch.zeros(len(y), 1, 4, 4, dtype=torch.uint8)
    loader = TensorLoader(
        x, y, batch_size=31, mean=[0.5], std=[0.5], train=True, sample_weights=balanced_sample_weights(y, 3)
    )
    seen = torch.cat([b for _, b in loader])
    share = torch.bincount(seen, minlength=3).float() / len(seen)
    assert (share - 1 / 3).abs().max() < 0.08  # drawn equally, although class 0 has 25x the images of class 2
