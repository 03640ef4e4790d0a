"""The training configuration: defaults in one place, every check in `validate`, one pure `resolve` step.

`TrainConfig` is what a user asks for (the `cnn train` flags map one to one onto its fields, with the same
defaults; a test checks that). `None` means "the recipe decides": `resolve` turns the request plus the facts of
the dataset and the machine into the concrete config that is written to args.json and into every checkpoint, so
a run can be rebuilt from its files. Standard library only: `cnn train --help` reads the defaults from here
without importing torch.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields, replace

from cnncli.errors import UsageError

# ----------------------------------------------------------------------------------------------- the recipe
# Every default that is not a TrainConfig field's own default lives here, with the reason for its value.
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "none")
PRECISIONS = ("auto", "32", "bf16", "16")
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam")  # cnn inspect cam --method
CACHE_MODES = ("auto", "none", "ram", "disk")  # cnn train --cache (folder datasets; data/cache.py)
AUGMENTS = ("none", "basic", "trivial", "randaugment", "autoaugment", "augmix")  # --augment (engine/recipe.py)
CLASS_WEIGHTS = ("none", "balanced")  # --class-weights
SAMPLERS = ("random", "balanced")  # --sampler
LOGGERS = ("csv", "tensorboard", "mlflow")  # --logger (engine/loggers.py); csv is metrics.csv, always written
EMA_DECAY = 0.999  # --ema-decay: the EMA's decay, reached after a warm-up (min(decay, (1 + t) / (10 + t)) at step t)
PRECISION_ALIASES = {"fp32": "32", "float32": "32", "bfloat16": "bf16", "fp16": "16", "float16": "16"}

SGD_LR = 0.1  # peak learning rate for SGD at batches from SGD_LR_SMALL_BATCH to SGD_LR_REFERENCE_BATCH
SGD_LR_REFERENCE_BATCH = 256  # above it the SGD learning rate grows linearly with the batch (Goyal et al. 2017)
SGD_LR_SMALL_BATCH = 64  # below it the rate falls with the square root of the batch (Krizhevsky 2014; Hoffer et
# al. 2017): 0.05 at 16, 0.035 at 8 (small folders: benchmarks/small_folders.py, docs/train.md)
SGD_MOMENTUM = 0.9  # Nesterov momentum
SGD_WEIGHT_DECAY = 5e-4  # the classic CIFAR/ResNet value
ADAMW_LR = 2e-3
ADAMW_WEIGHT_DECAY = 0.05  # decoupled decay: larger values than SGD's L2 are usual
EVAL_BATCH_MIN = 256  # evaluation keeps no activations for backward: bigger batches are free
MIN_STEPS_PER_EPOCH = 8  # small data: the default batch halves until an epoch has this many steps...
MIN_BATCH = 4  # ...but never below 4 images per process
ONECYCLE_WARMUP = 0.25  # one-cycle (Smith): linear warm-up over the first quarter...
ONECYCLE_START_DIV = 25  # ...from lr/25...
ONECYCLE_END_DIV = 1e4  # ...then cosine down to lr/1e4
COSINE_WARMUP = 0.05  # cosine: linear warm-up over 5% of the steps...
COSINE_WARMUP_MAX_STEPS = 200  # ...but never more than 200 steps


@dataclass
class TrainConfig:
    """Everything that defines a run. `None` = decided by `resolve` from the dataset and the recipe above."""

    model: str | None = None  # registry name, family, file.py:Class
    data: str | None = None  # dataset name or folder:PATH (see `cnn train --help`)
    data_dir: str | None = None  # default: $CNN_DATA_DIR or ~/.cache/cnncli/data
    epochs: int | None = None  # default: the dataset's (lines 4, digits 40, cifar10 30, ...)
    batch_size: int | None = None  # global batch size (split across ranks under torchrun); default: the dataset's
    lr: float | None = None  # peak learning rate; default sgd_lr(batch) (0.1 at batches of 64-256) or ADAMW_LR
    optimizer: str = "sgd"  # sgd (Nesterov momentum) | adamw
    schedule: str = "onecycle"  # onecycle | cosine | none
    weight_decay: float | None = None  # default SGD_WEIGHT_DECAY or ADAMW_WEIGHT_DECAY (never on biases and norms)
    label_smoothing: float = 0.1
    precision: str = "auto"  # auto | 32 | bf16 | 16; auto: bf16 where supported, fp16 on older GPUs
    channels_last: bool = True  # NHWC is faster for convolutions on CPU (oneDNN) and tensor cores
    compile: bool = False  # torch.compile the model
    seed: int = 0
    deterministic: bool = False  # deterministic algorithms: bit-repeatable on CPU
    workers: int | None = None  # DataLoader workers for folder datasets (None: the thread policy's, engine/threads.py)
    threads: int | None = None  # torch's CPU threads (None: CNN_THREADS, else the thread policy's)
    patience: int | None = None  # stop after this many epochs without a better val accuracy
    max_steps: int | None = None  # stop after this many optimizer steps (quick runs, tests)
    project: str = "runs"  # folder of runs
    name: str = "train"  # run folder name; an existing one gets a numbered sibling
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    img_size: list[int] | None = None  # folder datasets: resize to [H, W] (default: the images' own size)
    cache: str = "auto"  # folder datasets: auto | none | ram | disk (data/cache.py); auto: RAM when it fits
    num_classes: int | None = None  # default: the dataset's
    weights: str | None = None  # a model file or a published weights name (IMAGENET1K_V1): fitting tensors load
    trust_pickle: bool = False  # --weights may be a whole pickled model (unpickling runs its code)
    pretrained: bool = False  # start from the architecture's published weights (torchvision DEFAULT, timm's tag)
    freeze: str | None = None  # backbone (train the head only) | N (the first N top-level children stay as loaded)
    augment: str = "basic"  # none | basic (crop + flip) | trivial | randaugment | autoaugment | augmix (+ basic)
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0: off
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0: off (both: one of the two per batch)
    ema: bool = False  # evaluate and save an exponential moving average of the weights
    ema_decay: float = EMA_DECAY
    class_weights: str = "none"  # none | balanced: the loss weighted by inverse class frequency
    sampler: str = "random"  # random | balanced: each class drawn equally often (with replacement)
    accumulate: int = 1  # micro-batches per optimizer batch (the batch is split; the step is the same)
    clip_grad: float | None = None  # clip the gradients' global norm
    warmup_epochs: float | None = None  # linear warm-up over this many epochs (default: the schedule's own)
    logger: str = "csv"  # csv | tensorboard | mlflow, comma-separated (metrics.csv is always written)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """A config from args.json or a checkpoint's `args` (unknown keys of other versions are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunFacts:
    """What `resolve` needs to know besides the request: the dataset's defaults and the machine's abilities."""

    epochs: int  # the dataset's default epochs
    batch_size: int  # the dataset's default batch size
    num_classes: int  # the dataset's classes
    device_type: str = "cpu"  # cpu | cuda | mps
    bf16: bool = False  # the device computes bf16 natively
    world_size: int = 1  # processes under torchrun
    train_samples: int | None = None  # images in the training split (small data gets smaller batches)
    workers: int | None = None  # the thread policy's DataLoader workers (None: default_workers())
    threads: int | None = None  # the thread policy's intra-op threads (saved in args.json: a resume keeps them)


THREADS_ENV = "CNN_THREADS"  # the intra-op threads, when --threads is not given


def parse_threads(value, source: str = "--threads") -> int | None:
    """A thread count as given (`--threads` or CNN_THREADS): a positive integer, or None when not given."""
    if value is None or value == "":
        return None
    try:
        n = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{source} must be a positive integer, got {value!r}", "e.g. --threads 2") from None
    if n < 1:
        raise UsageError(f"{source} must be at least 1, got {n}", "leave it out to let cnn choose")
    return n


def _at_least(flag: str, value, low) -> None:
    if value is not None and value < low:
        raise UsageError(f"{flag} must be at least {low}, got {value}")


MIN_LR, MAX_RATE = (1.2e-38, 3.4e38)  # --lr / --weight-decay: representable in float32 (the optimizer's arithmetic)
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds
MAX_IMG_SIDE = 16384
# (flag, field, largest value): counts beyond these are typos or overflows, not requests
RANGE_LIMITS = (
    ("--epochs", "epochs", 1_000_000),
    ("--batch-size", "batch_size", 1 << 24),
    ("--max-steps", "max_steps", 10**12),
    ("--patience", "patience", 1_000_000),
    ("--workers", "workers", 256),
    ("--threads", "threads", 1024),
    ("--num-classes", "num_classes", 1_000_000),
)


def check_count(flag: str, value: int, low: int = 1, high: int = 1 << 24) -> int:
    """A count option (a batch size, top-k) within real bounds, for every command that takes one."""
    if not low <= value <= high:
        raise UsageError(f"{flag} must be in {low}..{high:,}, got {value:,}")
    return value


def validate(cfg: TrainConfig) -> TrainConfig:
    """Every check of a request, cheap ones first so bad usage fails in a moment, before any data is loaded.

    Returns the config with aliases normalized (`--precision fp16` -> `16`); the input is not changed.
    """
    if not cfg.model or not cfg.data:
        raise UsageError("give a MODEL and --data", "e.g. cnn train linenet --data lines, or --resume runs/train")
    if cfg.optimizer not in OPTIMIZERS:
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}", "use " + " or ".join(OPTIMIZERS))
    if cfg.schedule not in SCHEDULES:
        raise UsageError(f"unknown schedule {cfg.schedule!r}", "use " + ", ".join(SCHEDULES))
    for flag, value, allowed in (
        ("--augment", cfg.augment, AUGMENTS),
        ("--class-weights", cfg.class_weights, CLASS_WEIGHTS),
        ("--sampler", cfg.sampler, SAMPLERS),
    ):
        if value not in allowed:
            raise UsageError(f"unknown {flag} {value!r}", "use " + ", ".join(allowed))
    parse_loggers(cfg.logger)
    parse_freeze(cfg.freeze)
    if cfg.pretrained and cfg.weights:
        raise UsageError("--pretrained and --weights both say where to start", "give one of them")
    if cfg.cache not in CACHE_MODES:
        raise UsageError(f"unknown cache {cfg.cache!r}", "use " + ", ".join(CACHE_MODES))
    precision = PRECISION_ALIASES.get(str(cfg.precision).lower(), str(cfg.precision).lower())
    if precision not in PRECISIONS:
        raise UsageError(f"unknown precision {cfg.precision!r}", "use " + ", ".join(PRECISIONS))
    _check_numbers(cfg)
    _check_places(cfg)
    from cnncli.data import get_dataset_info  # the registries last: they are slower than the checks above
    from cnncli.models import resolve as resolve_model

    get_dataset_info(cfg.data)
    resolve_model(cfg.model)
    return replace(cfg, precision=precision)


def _check_numbers(cfg: TrainConfig) -> None:
    """Counts, rates, the seed and sizes within real ranges."""
    counts = (
        ("--epochs", cfg.epochs, 1),
        ("--batch-size", cfg.batch_size, 1),
        ("--max-steps", cfg.max_steps, 1),
        ("--patience", cfg.patience, 0),
        ("--workers", cfg.workers, 0),
        ("--threads", cfg.threads, 1),
        ("--num-classes", cfg.num_classes, 1),
    )
    for flag, value, low in counts:
        _at_least(flag, value, low)
    for flag, attr, high in RANGE_LIMITS:
        v = getattr(cfg, attr)
        if v is not None and v > high:
            raise UsageError(f"{flag} must be at most {high:,}, got {v:,}", "a value this large cannot be meant")
    for flag, rate in (("--lr", cfg.lr), ("--weight-decay", cfg.weight_decay)):
        # real ranges: a rate that overflows float32 (the optimizer's arithmetic) or underflows it is not a rate
        floor = 0.0 if flag == "--weight-decay" else MIN_LR
        if rate is not None and not (math.isfinite(rate) and floor <= rate <= MAX_RATE and (rate > 0 or floor == 0)):
            what = "a number >= 0" if floor == 0 else "a positive number"
            raise UsageError(f"{flag} must be {what} (at most {MAX_RATE:g}, float32's range), got {rate}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise UsageError(f"--seed must be in 0..{MAX_SEED}, got {cfg.seed}", "torch seeds are 64-bit")
    for flag, alpha in (("--mixup", cfg.mixup), ("--cutmix", cfg.cutmix)):
        if not (math.isfinite(alpha) and 0 <= alpha <= 100):
            raise UsageError(f"{flag} must be an alpha in [0, 100] (0: off; 0.2 and 1.0 are usual), got {alpha}")
    if not (math.isfinite(cfg.ema_decay) and 0 < cfg.ema_decay < 1):
        raise UsageError(f"--ema-decay must be in (0, 1), got {cfg.ema_decay}", "0.999 is usual")
    if not 1 <= cfg.accumulate <= 4096:
        raise UsageError(f"--accumulate must be in 1..4096, got {cfg.accumulate}")
    if cfg.clip_grad is not None and not (math.isfinite(cfg.clip_grad) and cfg.clip_grad > 0):
        raise UsageError(f"--clip-grad must be a positive norm, got {cfg.clip_grad}", "1.0 is usual")
    if cfg.warmup_epochs is not None and not (math.isfinite(cfg.warmup_epochs) and 0 <= cfg.warmup_epochs <= 1e6):
        raise UsageError(f"--warmup-epochs must be a number of epochs >= 0, got {cfg.warmup_epochs}")
    if not 0 <= cfg.label_smoothing < 1:
        raise UsageError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.img_size is not None and (len(cfg.img_size) != 2 or min(cfg.img_size) < 1):
        raise UsageError(f"--img-size must be HxW or N with positive sizes, got {cfg.img_size}")
    if cfg.img_size is not None and max(cfg.img_size) > MAX_IMG_SIDE:
        size = "x".join(map(str, cfg.img_size))
        raise UsageError(f"--img-size {size} is too large", f"at most {MAX_IMG_SIDE} pixels a side for training")


def parse_loggers(text: str) -> list[str]:
    """`--logger csv,tensorboard` -> the loggers asked for, each known (metrics.csv is always written)."""
    names = [n.strip() for n in str(text or "csv").split(",") if n.strip()]
    for n in names:
        if n not in LOGGERS:
            raise UsageError(f"unknown --logger {n!r}", "use " + ", ".join(LOGGERS) + " (several: comma-separated)")
    return names or ["csv"]


def parse_freeze(value) -> str | int | None:
    """`--freeze backbone` or `--freeze N` (the first N top-level children): "backbone", N or None."""
    if value in (None, "", "none", "0", 0):
        return None
    if value == "backbone":
        return "backbone"
    try:
        n = int(str(value))
    except ValueError:
        raise UsageError(f"--freeze takes backbone or a number of top-level layers, got {value!r}") from None
    if not 0 <= n <= 10_000:
        raise UsageError(f"--freeze N must be a count of top-level layers >= 0, got {n}")
    return n or None


def _check_places(cfg: TrainConfig) -> None:
    """The run's name, the --weights file and the --project folder."""
    name = cfg.name
    if not name or name in (".", "..") or os.sep in name or (os.altsep and os.altsep in name) or not name.isprintable():
        raise UsageError(f"--name must be a folder name, not a path: {name!r}", "use --project for the parent folder")
    if cfg.weights is not None and not is_weights_name(cfg.weights):
        from cnncli.fileio import check_input

        if not os.path.lexists(cfg.weights):
            raise UsageError(
                f"--weights file not found: {cfg.weights}", "give a model file: state dict, checkpoint, ..."
            )
        check_input(cfg.weights, "--weights file", kind="model")
    if os.path.exists(cfg.project) and not os.path.isdir(cfg.project):
        raise UsageError(f"--project {cfg.project} is a file", "give a folder for the runs")


def is_weights_name(text: str) -> bool:
    """A published weights name (DEFAULT, IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1, timm's tag like a1_in1k)
    rather than a file: no path separator, no file suffix, and no such file here."""
    import re

    name = r"(?:[A-Za-z][A-Za-z0-9]*_Weights\.)?[A-Za-z][A-Za-z0-9_]*"
    return bool(re.fullmatch(name, text or "")) and not os.path.lexists(text)


def resolve_precision(precision: str, device_type: str, bf16: bool) -> str:
    """auto -> bf16 where the device has it, fp16 on older GPUs, fp32 otherwise; fp16 training is for GPUs."""
    precision = PRECISION_ALIASES.get(precision, precision)
    if precision == "16" and device_type == "cpu":
        raise UsageError("fp16 training is for GPUs", "use --precision bf16 or 32 on CPU")
    if precision != "auto":
        return precision
    if bf16:
        return "bf16"
    return "16" if device_type == "cuda" else "32"


def resolve(cfg: TrainConfig, facts: RunFacts) -> TrainConfig:
    """The concrete config of a run: every `None` decided, precision chosen. Pure: `cfg` is not changed."""
    cfg = validate(cfg)
    batch = cfg.batch_size or small_data_batch(facts.batch_size, facts.train_samples, facts.world_size)
    if batch < facts.world_size:
        raise UsageError(f"batch size {batch} is smaller than the {facts.world_size} processes")
    if batch // facts.world_size < cfg.accumulate:
        raise UsageError(
            f"--accumulate {cfg.accumulate} splits a batch of {batch // facts.world_size} into more parts than images",
            "give a larger --batch-size or a smaller --accumulate",
        )
    if cfg.optimizer == "sgd":
        lr = cfg.lr or sgd_lr(batch)
        wd = SGD_WEIGHT_DECAY if cfg.weight_decay is None else cfg.weight_decay
    else:
        lr = cfg.lr or ADAMW_LR
        wd = ADAMW_WEIGHT_DECAY if cfg.weight_decay is None else cfg.weight_decay
    if cfg.num_classes is not None and facts.num_classes and cfg.num_classes < facts.num_classes:
        raise UsageError(
            f"--num-classes {cfg.num_classes} is fewer than the {facts.num_classes} classes of {cfg.data}",
            f"leave it out (the dataset's {facts.num_classes}) or give at least {facts.num_classes}",
        )
    workers = cfg.workers if cfg.workers is not None else facts.workers
    workers = default_workers(facts.world_size) if workers is None else workers
    return replace(
        cfg,
        epochs=cfg.epochs or facts.epochs,
        batch_size=batch,
        lr=lr,
        weight_decay=wd,
        workers=workers,
        threads=cfg.threads or facts.threads,
        num_classes=cfg.num_classes or facts.num_classes,
        precision=resolve_precision(cfg.precision, facts.device_type, facts.bf16),
    )


def sgd_lr(batch: int) -> float:
    """The default SGD peak rate for a (global) batch: SGD_LR from batch 64 to 256, linear above 256, the square
    root below 64 (docs/train.md: at a batch of 16, from --weights 0.05 tested above 0.1; from scratch its last
    epoch did, its best.pt epoch did not, and 0.03 was above both)."""
    if batch > SGD_LR_REFERENCE_BATCH:
        return SGD_LR * batch / SGD_LR_REFERENCE_BATCH
    if batch < SGD_LR_SMALL_BATCH:
        return SGD_LR * math.sqrt(batch / SGD_LR_SMALL_BATCH)
    return SGD_LR


def default_workers(world_size: int = 1) -> int:
    """DataLoader workers per process: the CPUs this process may use, shared by the processes of a run, at most 8
    (beyond that decoding rarely waits), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 2
    return max(1, min(8, cpus // max(1, world_size)))


def small_data_batch(default: int, train_samples: int | None, world_size: int = 1) -> int:
    """The dataset's batch size, halved until an epoch has at least MIN_STEPS_PER_EPOCH steps (a folder of 36
    images would otherwise train one step per epoch, or none), never below MIN_BATCH per process."""
    batch = default
    floor = MIN_BATCH * world_size
    while train_samples and batch // 2 >= floor and train_samples // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def lr_at(step: int, total: int, base_lr: float, schedule: str, warmup: int | None = None) -> float:
    """Learning rate as a pure function of the step, so resuming needs only the step count. `warmup` (steps, from
    --warmup-epochs) replaces the schedule's own warm-up: linear up to `base_lr`, then the schedule's decay over
    the steps left (cosine to 0, onecycle's cosine to lr/1e4, none: constant)."""
    if warmup is not None:
        if step < warmup:
            return base_lr * (step + 1) / (warmup + 1)
        if schedule == "none" or total <= warmup:
            return base_lr
        t = min((step - warmup) / (total - warmup), 1.0)
        end = 0.0 if schedule == "cosine" else base_lr / ONECYCLE_END_DIV
        return end + (base_lr - end) * 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "none" or total <= 0:
        return base_lr
    t = min(step / total, 1.0)
    if schedule == "cosine":
        warm = min(COSINE_WARMUP, COSINE_WARMUP_MAX_STEPS / max(total, 1))
        if t < warm:
            return base_lr * t / warm
        return base_lr * 0.5 * (1 + math.cos(math.pi * (t - warm) / (1 - warm)))
    start, end = base_lr / ONECYCLE_START_DIV, base_lr / ONECYCLE_END_DIV
    if t < ONECYCLE_WARMUP:
        return start + (base_lr - start) * t / ONECYCLE_WARMUP
    return end + (base_lr - end) * 0.5 * (1 + math.cos(math.pi * (t - ONECYCLE_WARMUP) / (1 - ONECYCLE_WARMUP)))
