"""The fine-tuning recipe's parts, each a small object the training loop calls: freezing, the weights' moving
average, MixUp/CutMix, the augmentation policies, class weights. They are torchvision's where torchvision has them
(transforms.v2's TrivialAugmentWide, RandAugment, AutoAugment, AugMix, MixUp, CutMix), and every random draw comes
from a generator seeded by (seed, epoch, step), so a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import torch
import torch.nn as nn

from cnncli.config import parse_freeze
from cnncli.errors import UsageError

# ------------------------------------------------------------------------------------------------- freezing


def head_modules(model: nn.Module, num_classes: int) -> list[str]:
    """The names of the modules that make the class scores: the last Linear (or 1x1 Conv2d) that outputs
    `num_classes`, and its parent when that is a small sequential head (Dropout + Linear)."""
    last = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and m.out_features == num_classes:
            last = name
        elif isinstance(m, nn.Conv2d) and m.out_channels == num_classes and m.kernel_size == (1, 1):
            last = name
    if last is None:
        raise UsageError(
            "--freeze backbone: no layer of the model outputs the class scores (a Linear or 1x1 conv)",
            "use --freeze N to freeze the first N top-level layers",
        )
    return [last]


class Frozen:
    """The parameters that do not train (requires_grad off, left out of the optimizer) and the BatchNorm layers
    among them held in eval mode, so their statistics stay as loaded: frozen tensors end bit-identical."""

    def __init__(self, model: nn.Module, spec, num_classes: int):
        how = parse_freeze(spec)
        self.modules: list[nn.Module] = []
        self.names: list[str] = []
        if how is None:
            return
        if how == "backbone":
            head = head_modules(model, num_classes)
            keep = {id(p) for n in head for p in model.get_submodule(n).parameters()}
            heads = [model.get_submodule(n) for n in head]
            inside_head = {id(m) for h in heads for m in h.modules()}
            self.modules = [m for m in model.modules() if id(m) not in inside_head and not list(m.children())]
            frozen = [(n, p) for n, p in model.named_parameters() if id(p) not in keep]
            self.names = [f"everything but {', '.join(head)}"]
        else:
            children = list(model.named_children())
            if how >= len(children):
                raise UsageError(
                    f"--freeze {how}: the model has {len(children)} top-level layers",
                    f"freeze at most {len(children) - 1} ({', '.join(n for n, _ in children[:6])}...)",
                )
            self.modules = [m for _, c in children[:how] for m in c.modules()]
            frozen = [(f"{n}.{pn}", p) for n, c in children[:how] for pn, p in c.named_parameters()]
            self.names = [n for n, _ in children[:how]]
        for _, p in frozen:
            p.requires_grad_(False)
        self.count = sum(p.numel() for _, p in frozen)

    def __bool__(self) -> bool:
        return bool(self.modules)

    def hold(self) -> None:
        """After `model.train()`: the frozen normalization layers go back to eval mode (running statistics kept)."""
        for m in self.modules:
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.eval()


# --------------------------------------------------------------------------------------------------- EMA


class ModelEMA:
    """An exponential moving average of a model's weights and buffers (as yolo's and timm's ModelEmaV2): after each
    optimizer step, ema = d * ema + (1 - d) * weights with d = min(decay, (1 + t) / (10 + t)), the warm-up that lets
    the average follow the first steps. Integer buffers (BatchNorm's step count) are copied."""

    def __init__(self, model: nn.Module, decay: float):
        import copy

        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        mine = self.module.state_dict()
        for name, v in model.state_dict().items():
            e = mine[name]
            if e.dtype.is_floating_point:
                e.lerp_(v.detach(), 1.0 - d)
            else:
                e.copy_(v)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)


# ----------------------------------------------------------------------------------------- MixUp / CutMix


class Mixing:
    """MixUp and/or CutMix over a normalized batch on the device (torchvision.transforms.v2: one Beta(alpha, alpha)
    draw and a roll-by-one pairing per batch, the labels mixed into probabilities); both asked: one of the two per
    batch. Seeded by (seed, step)."""

    def __init__(self, mixup: float, cutmix: float, num_classes: int, seed: int):
        from torchvision.transforms import v2

        parts = []
        if mixup > 0:
            parts.append(v2.MixUp(alpha=mixup, num_classes=num_classes))
        if cutmix > 0:
            parts.append(v2.CutMix(alpha=cutmix, num_classes=num_classes))
        self.transform = parts[0] if len(parts) == 1 else v2.RandomChoice(parts) if parts else None
        self.seed = seed

    def __bool__(self) -> bool:
        return self.transform is not None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, step: int):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 1_000_003 + step + 7) % (1 << 62))
            return self.transform(x, y)


# -------------------------------------------------------------------------------------- augmentation policy


def policy(name: str, channels: int):
    """The v2 policy --augment names, applied to one uint8 image [C, H, W] after the crop and flip (None for none
    and basic). AugMix and the colour operations need 3 channels; a 1-channel image goes through as 3 and back."""
    from torchvision.transforms import v2

    made = {
        "trivial": lambda: v2.TrivialAugmentWide(),
        "randaugment": lambda: v2.RandAugment(),
        "autoaugment": lambda: v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET),
        "augmix": lambda: v2.AugMix(),
    }.get(name)
    if made is None:
        return None
    t = made()
    if channels == 3:
        return t
    return _Grey(t)


class _Grey:
    """A colour policy on a 1-channel (or other) image: repeated to RGB, transformed, averaged back."""

    def __init__(self, t):
        self.t = t

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        c = img.shape[-3]
        if c == 1:
            out = self.t(img.expand(*img.shape[:-3], 3, *img.shape[-2:]).contiguous())
            return out.float().mean(-3, keepdim=True).round().to(img.dtype)
        return self.t(img)

    def __repr__(self) -> str:
        return f"grey({self.t!r})"


def apply_per_sample(t, x: torch.Tensor, generator_seed: int) -> torch.Tensor:
    """A policy applied to each image of a uint8 batch on its own (its own random operation and strength), drawn
    from one seeded generator: the batch is the same whatever ran before it."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(generator_seed)
        return torch.stack([t(img) for img in x])


# ------------------------------------------------------------------------------------------- class balance


def class_counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels.long().cpu(), minlength=num_classes).double()


def balanced_class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, as scikit-learn's compute_class_weight("balanced"): n / (k * count), for the k
    classes that have images (a class without images gets 0: it never appears as a target)."""
    counts = class_counts(labels, num_classes)
    present = counts > 0
    k = int(present.sum())
    w = torch.zeros(num_classes, dtype=torch.float64)
    w[present] = counts.sum() / (k * counts[present])
    return w.float()


def balanced_sample_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each image's draw weight so that every class is drawn equally often: 1 / its class's count."""
    counts = class_counts(labels, num_classes)
    return (1.0 / counts.clamp(min=1))[labels.long().cpu()]


def train_labels(data) -> torch.Tensor:
    """The training split's labels (for class weights and the balanced sampler)."""
    split = data.split("train")
    if isinstance(split, tuple):
        return split[1]
    return torch.tensor([label for _, label in split], dtype=torch.long)


def build_recipe(model: nn.Module, cfg, data, device: torch.device, report=None):
    """(frozen layers, the moving average or None, MixUp/CutMix, the loss with its class weights) of a run;
    `report` hears what was frozen."""
    from cnncli.engine.events import Note

    frozen = Frozen(model, cfg.freeze, cfg.num_classes)
    if frozen and report is not None:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        what = ", ".join(frozen.names)
        report(Note(f"--freeze {cfg.freeze}: {frozen.count:,} parameters frozen ({what}), {trainable:,} train"))
    ema = ModelEMA(model, cfg.ema_decay) if cfg.ema else None
    mixing = Mixing(cfg.mixup, cfg.cutmix, cfg.num_classes, cfg.seed)
    weight = None
    if cfg.class_weights == "balanced":
        weight = balanced_class_weights(train_labels(data), cfg.num_classes).to(device)
    return frozen, ema, mixing, nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
