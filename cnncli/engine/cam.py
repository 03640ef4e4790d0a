"""`cnn inspect cam`: class activation maps of images, written as .npy maps and PNG overlays.

Every image is read, checked and resized to the model's input (the one resize policy, as `cnn predict` sees it)
before anything is written; the target layer is checked (or found) on the first image; the maps are computed in
batches and brought back to each image's own size.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cnncli.analysis.cam import Layout, at_image_size, cam_maps, check_layer, find_target_layer
from cnncli.errors import UsageError, shown
from cnncli.models._manipulate import no_inplace
from cnncli.models.open import OpenedModel


@dataclass
class CamResult:
    """One image's maps as `--json` reports them."""

    image: str
    cls: str
    probability: float
    layer: str
    method: str
    npy: str
    png: str
    size: list  # [H, W] of the image and of the .npy map
    shown: list = field(default_factory=list)  # [{"class", "probability"}] per panel of the PNG
    blank: bool = False  # no positive evidence for the class at the layer: the map is zero everywhere

    def as_json(self) -> dict:
        d = asdict(self)
        d["class"] = d.pop("cls")  # `class` is a keyword in Python, a key in the JSON
        return d


@dataclass
class _Image:
    path: str
    stem: str
    size: tuple[int, int]  # its own (H, W)
    pixels: torch.Tensor  # uint8 [C, h, w] at the model's input size
    shown: torch.Tensor  # uint8 [C, H', W'], at most CAM_PANEL_SIDE a side, for the overlay


@dataclass
class CamJob:
    opened: OpenedModel
    images: list[_Image]
    output: str
    device: torch.device
    only: int | None
    method: str
    layer: str
    layout: Layout

    @classmethod
    def prepare(
        cls,
        opened: OpenedModel,
        paths: list[str],
        output: str,
        device,
        *,
        class_name: str | None,
        method: str,
        layer: str | None,
    ) -> CamJob:
        """Everything checked before any work: the class, the images (read), the outputs (none replaces an input)
        and the target layer (named or found)."""
        from cnncli.data.images import load_resized, read_image, resize, upright_size
        from cnncli.engine.scoremap import output_stems
        from cnncli.plots import CAM_PANEL_SIDE

        classes = opened.classes
        only = None
        if class_name is not None:
            if class_name not in classes:
                raise UsageError(f"unknown class {class_name!r}", "classes: " + ", ".join(classes[:20]))
            only = classes.index(class_name)
        c, h, w = opened.input_size
        images = []
        inputs = {os.path.realpath(p) for p in paths}
        for path, stem in zip(paths, output_stems(paths)):
            pixels = load_resized(path, c, (h, w))  # as cnn predict sees it
            ih, iw = upright_size(path) or read_image(path, c).shape[1:]
            f = min(1.0, CAM_PANEL_SIDE / max(ih, iw))
            shown_size = (max(1, round(ih * f)), max(1, round(iw * f)))
            small = resize(read_image(path, c, draft=shown_size), shown_size)
            images.append(_Image(path, stem, (ih, iw), pixels, small))
            for out in _outputs(output, stem):
                if os.path.realpath(out) in inputs:
                    raise UsageError(
                        f"the map of {shown(path)} would be written over the input {shown(out)}",
                        "give another -o folder",
                    )
        model = no_inplace(opened.model).to(device).eval()
        opened.model = model
        job = cls(opened, images, output, device, only, method, "", Layout("nchw", (1, 1)))
        x = job._batch(images[:1])
        if layer is None:
            job.layer, job.layout = find_target_layer(model, x)
        else:
            job.layer, job.layout = layer, check_layer(model, x, layer)
        return job

    def _batch(self, images: list[_Image]) -> torch.Tensor:
        from cnncli.models.open import ModelRequest, resolve_preprocess

        pre = self.opened.preprocess or resolve_preprocess(self.opened.spec, ModelRequest(), {})[0]
        return pre.normalize(torch.stack([im.pixels for im in images]), self.device)

    def run(self, *, batch: int, top: int, on_blank: Callable[[str], None] | None = None) -> list[CamResult]:
        """Maps for every image, `batch` at a time: the asked class, or the `top` most probable side by side."""
        os.makedirs(self.output, exist_ok=True)
        results = []
        for i in range(0, len(self.images), batch):
            chunk = self.images[i : i + batch]
            x = self._batch(chunk)
            ranked = self._classes(x, top) if self.only is None else [[self.only] for _ in chunk]
            maps, probs = cam_maps(self.opened.model, x, self.layer, self.layout, ranked, self.method)
            for j, im in enumerate(chunk):
                full = at_image_size(maps[0][j].cpu(), im.size)  # the .npy's map; the panels at the picture's size
                panels = [at_image_size(maps[r][j].cpu(), tuple(im.shown.shape[1:])) for r in range(len(ranked[j]))]
                shown_ = [{"class": self.opened.classes[k], "probability": float(probs[j, k])} for k in ranked[j]]
                results.append(self._write(im, full, panels, shown_))
                if results[-1].blank and on_blank:
                    on_blank(
                        f"{im.path}: nothing at {self.layer} raises the score of {results[-1].cls} "
                        "(the map is zero everywhere)"
                    )
        return results

    def _classes(self, x: torch.Tensor, top: int) -> list[list[int]]:
        """The `top` most probable classes of each image, most probable first."""
        from cnncli.analysis.cam import class_scores

        with torch.no_grad():
            logits = class_scores(self.opened.model(x))
        return logits.topk(min(top, logits.shape[1]), dim=1).indices.tolist()

    def _write(self, im: _Image, full: torch.Tensor, panels: list[torch.Tensor], shown_: list[dict]) -> CamResult:
        """One image's .npy (the first class's map at the image's size) and PNG (every panel)."""
        from cnncli.engine.scoremap import write_npy
        from cnncli.plots import plot_cam

        npy, png = _outputs(self.output, im.stem)
        write_npy(npy, full.numpy().astype(np.float32))
        labels = [
            f"{s['class']} ({s['probability']:.1%})" + (": no evidence here" if float(m.max()) == 0 else "")
            for s, m in zip(shown_, panels)
        ]
        title = f"{self.opened.name}: {self.method} at {self.layer} on {os.path.basename(im.path)}"
        plot_cam(im.shown, panels, labels, png, title=title)
        blank = float(full.max()) == 0.0
        return CamResult(
            im.path, shown_[0]["class"], shown_[0]["probability"], self.layer, self.method, npy, png,
            list(im.size), shown_, blank,
        )  # fmt: skip


def _outputs(folder: str, stem: str) -> tuple[str, str]:
    return os.path.join(folder, f"{stem}-cam.npy"), os.path.join(folder, f"{stem}-cam.png")
