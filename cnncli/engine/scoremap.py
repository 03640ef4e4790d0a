"""Score maps of a fully-convolutional model over whole images: arrays, overlays, and a generated test scene.

A classifier checkpoint is converted on the fly (verified), so `cnn scoremap` accepts both kinds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch

from cnncli.analysis.fcn import score_map, to_fully_convolutional
from cnncli.data.images import read_image
from cnncli.errors import UsageError, shown
from cnncli.fileio import atomic_write
from cnncli.models.open import OpenedModel


@dataclass
class ScoreMap:
    """One image's score map as `cnn scoremap --json` reports it (`as_json`; `region_agreement` only for a
    generated scene, whose true regions are known)."""

    image: str
    scores_shape: list  # [classes, H', W']
    stride: list
    receptive_field: list
    offset: list
    argmax_counts: dict  # class -> cells it wins
    npy: str
    png: str
    region_agreement: float | None = None

    def as_json(self) -> dict:
        d = asdict(self)
        if self.region_agreement is None:
            del d["region_agreement"]
        return d


@dataclass
class ScoreMapper:
    """A fully-convolutional model with its conversion facts, preprocessing and class names."""

    model: torch.nn.Module
    facts: dict  # stride, receptive_field, offset
    opened: OpenedModel
    converted_diff: float | None = None  # set when converted on the fly: the verified max |logit difference|

    @classmethod
    def from_opened(cls, opened: OpenedModel, device="cpu") -> ScoreMapper:
        diff = None
        if opened.fully_convolutional:
            model, facts = opened.model, opened.checkpoint.fcn
        else:
            conv = to_fully_convolutional(opened.model, opened.input_size, verify=True)
            model, facts, diff = conv.model, conv.as_dict(), conv.max_abs_diff
        return cls(model.to(device).eval(), facts, opened, diff)

    @property
    def classes(self) -> list[str]:
        return self.opened.classes

    def class_index(self, name: str | None) -> int | None:
        if name is None:
            return None
        if name not in self.classes:
            raise UsageError(f"unknown class {name!r}", "classes: " + ", ".join(self.classes[:20]))
        return self.classes.index(name)

    def check_size(self, path: str, img: torch.Tensor) -> None:
        _, th, tw = self.opened.input_size
        if img.shape[1] < th or img.shape[2] < tw:
            raise UsageError(
                f"{path} is {img.shape[1]}x{img.shape[2]}, smaller than the training size {th}x{tw}",
                "score maps need images at least as large as the training images",
            )

    def output_paths(self, path: str, out_dir: str, *, only: int | None = None, stem: str | None = None):
        """The .npy and .png one image's maps go to (a class name from the file is made a safe file name)."""
        import re

        stem = stem or os.path.splitext(os.path.basename(path))[0]
        suffix = "-" + re.sub(r"[^\w.-]+", "_", self.classes[only])[:80].lstrip(".") if only is not None else ""
        return os.path.join(out_dir, stem + ".npy"), os.path.join(out_dir, stem + suffix + "-scoremap.png")

    def check_outputs(self, paths: list[str], out_dir: str, stems: list[str], only: int | None) -> None:
        """No map may be written over an input image (a.png's map where another input is named a.npy, or -o the
        images' own folder with an image called x-scoremap.png): refused before anything is written."""
        inputs = {os.path.realpath(p) for p in paths}
        for p, stem in zip(paths, stems):
            for out in self.output_paths(p, out_dir, only=only, stem=stem):
                if os.path.realpath(out) in inputs:
                    raise UsageError(
                        f"the score map of {shown(p)} would be written over the input {shown(out)}",
                        "give another -o folder",
                    )

    def run(
        self,
        path: str,
        img: torch.Tensor,
        out_dir: str,
        *,
        only: int | None = None,
        regions: torch.Tensor | None = None,
        stem: str | None = None,
    ) -> ScoreMap:
        """Score map of one uint8 image [C, H, W]: STEM.npy (probabilities [classes, H', W']) and an overlay PNG."""
        self.check_size(path, img)
        device = next(self.model.parameters()).device
        scores = score_map(self.model, self.opened.preprocess.normalize(img, device)).cpu()
        npy, png = self.output_paths(path, out_dir, only=only, stem=stem)
        write_npy(npy, scores.numpy().astype(np.float32))
        from cnncli.plots import render_overlay

        render_overlay(img, scores, self.facts, self.classes, png, only)
        win = scores.argmax(0)
        counts = {self.classes[i]: int((win == i).sum()) for i in range(len(self.classes)) if int((win == i).sum())}
        return ScoreMap(
            path,
            list(scores.shape),
            list(self.facts["stride"]),
            _listed(self.facts["receptive_field"]),
            list(self.facts["offset"]),
            counts,
            npy,
            png,
            None if regions is None else region_agreement(win, regions, self.facts),
        )


def write_npy(path: str, arr: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
            np.save(f, arr)

    atomic_write(path, write)


def lines_scene(
    out_dir: str, size: tuple[int, int], seed: int, channels: int
) -> tuple[str, torch.Tensor, torch.Tensor]:
    """A generated scene of horizontal-line and vertical-line regions, saved as PNG with its region labels (.npy)."""
    from PIL import Image

    from cnncli.data.lines import scene

    img, labels = scene(*size, seed=seed)
    if channels != 1:
        img = img.expand(channels, -1, -1).contiguous()
    path = os.path.join(out_dir, f"scene-lines-{seed}.png")
    atomic_write(path, lambda tmp: Image.fromarray(img[0].numpy()).save(tmp, format="png"))
    write_npy(os.path.join(out_dir, f"scene-lines-{seed}-regions.npy"), labels.numpy())
    return path, img, labels


def _listed(v):
    return v if isinstance(v, str) else list(v)


def region_agreement(win: torch.Tensor, labels: torch.Tensor, facts: dict) -> float:
    """Fraction of cells whose winning class is the region label at the centre of the cell's window."""
    from cnncli.analysis.fcn import placement

    s, (o, rf) = facts["stride"], placement(facts)
    hp, wp = win.shape
    ys = (o[0] + (rf[0] - 1) // 2 + torch.arange(hp) * s[0]).clamp(0, labels.shape[0] - 1)
    xs = (o[1] + (rf[1] - 1) // 2 + torch.arange(wp) * s[1]).clamp(0, labels.shape[1] - 1)
    return float((labels[ys][:, xs] == win).float().mean())


def images_from(paths: list[str], channels: int) -> list[tuple[str, torch.Tensor]]:
    return [(p, read_image(p, channels)) for p in paths]


def output_stems(paths: list[str]) -> list[str]:
    """One output name per input image: its file name without extension, numbered (x, x-2, x-3) where two inputs
    share a name (a/x.png and b/x.png), so no image's maps overwrite another's."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = os.path.splitext(os.path.basename(p))[0]
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems
