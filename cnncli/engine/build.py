"""What a run trains on and what it trains, built in one place: the data and the config made concrete from it; the model (fresh, from --weights, or in a resumed run's layout), checked
to return one score per class, placed on the device (channels_last, DistributedDataParallel, torch.compile), and
its optimizer."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import replace
from typing import NamedTuple

import torch
import torch.nn as nn

from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.config import SGD_MOMENTUM, RunFacts, TrainConfig, is_weights_name, resolve
from cnncli.engine.events import Note
from cnncli.errors import UsageError


def training_data(
    cfg: TrainConfig, device: torch.device, dist, report: Callable | None, resumed: bool = False, published=None
):
    """(the dataset, the config made concrete from what the data and the device are, the CPU thread plan): the
    whole small-image set as one uint8 tensor on the device, or a folder streamed from disk; published weights'
    mean/std and size (_as_published); on a CPU the thread policy (engine/threads.py), applied here. `report`
    (rank 0's) hears the data's notes."""
    from cnncli.data import load_dataset
    from cnncli.engine.device import bf16_supported

    data = load_dataset(cfg.data, cfg.data_dir, image_size=tuple(cfg.img_size) if cfg.img_size else None)
    if "train" not in data.splits:
        raise UsageError(
            f"{cfg.data} has no train/ folder (only {', '.join(data.splits)}/)",
            "training needs PATH/train/CLASS/*.png or PATH/CLASS/*.png; cnn eval measures the rest",
        )
    for note in getattr(data, "notes", ()) if report else ():
        report(Note(note))
    if published is not None:
        data = _as_published(data, published, cfg, report)
    if folder := getattr(data, "folders", None) is not None:
        data = _folder_ready(data, cfg, report, sized=published is not None)
    elif cfg.cache in ("ram", "disk") and report:
        report(Note(f"--cache {cfg.cache}: {cfg.data} is held in memory already (--cache is for image folders)"))
    plan = _thread_plan(cfg, data, folder, resumed) if device.type == "cpu" else None
    facts = RunFacts(
        data.epochs,
        data.batch_size,
        data.num_classes,
        device.type,
        bf16_supported(device),
        dist.world_size,
        data.num_samples("train"),
        plan.workers if plan else None,
        plan.intra if plan else None,
    )
    cfg = resolve(cfg, facts)
    if dist.enabled and report:
        per_rank = cfg.batch_size // dist.world_size
        report(Note(f"global batch {cfg.batch_size} split across {dist.world_size} ranks: {per_rank} per rank"))
    return data, cfg, plan


def published_weights(cfg: TrainConfig, resume_from: Checkpoint | None):
    """The published weights a run starts from, named by --pretrained or --weights NAME, or a resumed run's record;
    None when it starts from a file or from scratch."""
    from cnncli.models.published import Published, published_for

    if resume_from is not None:
        return Published.from_record(resume_from.pretrained) if resume_from.pretrained else None
    if not (cfg.pretrained or (cfg.weights and is_weights_name(cfg.weights))):
        return None
    from cnncli.models import resolve as resolve_model

    return published_for(resolve_model(cfg.model), None if cfg.pretrained else cfg.weights)


def _thread_plan(cfg: TrainConfig, data, folder: bool, resumed: bool):
    """The CPU thread plan, applied. The decoding cost only decides the workers: none is measured when --workers is
    given, and a cached training split has nothing left to decode."""
    from cnncli.engine import threads

    streams = folder and cfg.workers is None and data.cached("train") is None and threads.decoding_is_costly(data)
    plan = threads.plan(cfg.threads, cfg.workers, streams_files=streams, deterministic=cfg.deterministic)
    if resumed and cfg.threads is not None:  # the count the run chose, from its args.json
        plan = replace(plan, chosen_by="as saved")
    threads.apply(plan)
    return plan


def step_counts(cfg: TrainConfig, batches_per_epoch: int) -> tuple[int, int | None]:
    """(the run's optimizer steps, its warm-up steps or None); UsageError when an epoch has no batch at all."""
    if batches_per_epoch == 0:
        raise UsageError(f"batch size {cfg.batch_size} is larger than the training set", "use a smaller --batch-size")
    total = cfg.epochs * batches_per_epoch
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    we = cfg.warmup_epochs
    return total, (None if we is None else min(round(we * batches_per_epoch), total))


def starting_file(cfg: TrainConfig, published, resumed: bool, report: Callable, progress: bool) -> str | None:
    """The file a new run's tensors come from: --weights FILE, or the published weights' file, fetched (or found in
    the cache) before any data is read; a progress bar on a terminal. None for a resumed run (last.pt has them)."""
    if resumed or published is None:
        return None if resumed else cfg.weights
    import sys

    from cnncli.models.published import fetch

    return fetch(published, lambda m: report(Note(m)), progress=progress and sys.stderr.isatty())


def _as_published(data, published, cfg: TrainConfig, report: Callable | None):
    """The data normalized as the published weights were trained (their mean/std; averaged for grey images), and a
    folder's images at the weights' own input size unless --img-size gives one."""
    mean, std = published.mean, published.std
    c = data.input_size[0]
    if c != len(mean):
        mean, std = (sum(mean) / len(mean),) * c, (sum(std) / len(std),) * c
    data = replace(data, mean=tuple(mean), std=tuple(std))
    if getattr(data, "folders", None) is not None and cfg.img_size is None:
        side = published.crop_size
        data = replace(data, image_size=(side, side))
        if report:
            report(
                Note(
                    f"{data.name}: images resized to {side}x{side}, the size {published.name} was made at; "
                    "--img-size HxW sets another"
                )
            )
    return data


def _folder_ready(data, cfg: TrainConfig, report: Callable | None, sized: bool = False):
    """A folder dataset at its training size (the median, capped, unless --img-size), its images decoded once into
    the cache --cache asks for (data/cache.py). `sized`: published weights chose the size already."""
    from cnncli.data._registry import default_data_dir
    from cnncli.data.cache import attach

    if cfg.img_size is None and not sized:
        data = _capped_size(data, cfg.model, report)
    say = (lambda m: report(Note(m))) if report else None
    return attach(data, cfg.cache, cfg.data_dir or default_data_dir(), say)


IMAGE_SIDE_CAP = 224  # a folder's images are trained at most this large (or the model's own size, when larger)


def _capped_size(data, model: str, report: Callable | None):
    """A folder's median image size, its longer side capped at the model's design size and never above what
    IMAGE_SIDE_CAP allows (camera photos at 3000x4000 would otherwise train at full size), said in the log."""
    from cnncli.models import resolve as resolve_model

    h, w = data.image_size
    try:
        design = max(resolve_model(model).input_size[1:])
    except UsageError:  # the model's own error comes when it is built
        design = IMAGE_SIDE_CAP
    cap = max(IMAGE_SIDE_CAP, design)
    if max(h, w) <= cap:
        return data
    f = cap / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    if report:
        report(
            Note(
                f"{data.name}: images resized to {size[0]}x{size[1]} (the folder's median size {h}x{w}, its longer "
                f"side capped at {cap}); --img-size HxW sets another"
            )
        )
    return replace(data, image_size=size)


class Built(NamedTuple):
    spec: ModelSpec
    model: nn.Module  # the plain model: checkpoints always hold its state dict
    forward_model: nn.Module  # what the steps call (wrapped by DDP and torch.compile when asked)
    channels_last: bool


def build_for_training(
    cfg: TrainConfig,
    input_size,
    device: torch.device,
    dist,
    resume_from: Checkpoint | None,
    report: Callable,
    start: str | None = None,
) -> Built:
    """The model to train: a resumed run's layout, or fresh, its tensors from `start` (a --weights file or the
    published weights' cached file) where they fit."""
    from cnncli.models import build_model
    from cnncli.models import resolve as resolve_model
    from cnncli.models.open import probe
    from cnncli.models.transfer import transfer_weights
    from cnncli.models.weights import read_weights

    info = resolve_model(cfg.model)
    c, h, w = input_size
    name = info.qualified if info.source != "file" else cfg.model
    spec = ModelSpec(name, cfg.num_classes, c, (h, w), resume_from.model.build_size if resume_from else None)
    weights = None
    if start and resume_from is None:  # a resumed run has its weights in last.pt
        weights = read_weights(start, spec.name, spec.input_size, trust_pickle=cfg.trust_pickle, exact=False)
        spec = replace(spec, build_size=weights.build_size(info.source, spec.image_size))
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = build_model(spec)
    if weights is not None:
        done = transfer_weights(model, weights.state, start)
        report(Note(message=f"weights from {weights.describe(spec.build_size)}: {done.summary()}"))
    out = probe(model.eval(), spec.input_size)
    if out.dim() != 2 or out.shape[1] != spec.num_classes:  # fails here, before any file is written
        raise UsageError(
            f"{spec.name} returns {tuple(out.shape)} for one image, not [1, {spec.num_classes}] class scores",
            "forward() must return the logits",
        )
    channels_last = cfg.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules())
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward_model = model
    if dist.enabled:
        ids = [device.index] if device.type == "cuda" else None
        forward_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if cfg.compile:
        forward_model = torch.compile(forward_model)
    return Built(spec, model, forward_model, channels_last)


def loader_for(data, split: str, cfg: TrainConfig, device, dist, channels_last: bool, *, train: bool):
    """A split's batches on the device, with the recipe's augmentation and sampler when training; evaluation
    batches are at least EVAL_BATCH_MIN."""
    from cnncli.config import EVAL_BATCH_MIN
    from cnncli.data import make_loader
    from cnncli.engine.recipe import balanced_sample_weights, train_labels

    local = cfg.batch_size // dist.world_size
    weights = None
    if train and cfg.sampler == "balanced":
        weights = balanced_sample_weights(train_labels(data), cfg.num_classes)
    return make_loader(
        data,
        split,
        batch_size=local if train else max(local, EVAL_BATCH_MIN),
        train=train,
        seed=cfg.seed,
        device=device,
        channels_last=channels_last,
        workers=cfg.workers,
        rank=dist.rank,
        world_size=dist.world_size,
        augment=cfg.augment if train else "none",
        sample_weights=weights,
    )


def optimizer_for(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; no weight decay on biases and normalization scales."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen layers (--freeze) are not stepped
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = not deterministic
