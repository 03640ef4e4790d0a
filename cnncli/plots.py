"""Every picture cnn draws, in one place (matplotlib, Agg backend, each PNG written atomically): training curves
and confusion matrices, a layer's kernels, feature maps, a unit's receptive field, score-map overlays. The numbers
come from `analysis/` and `engine/`; this module only draws them. A new kind of picture is a function here.
"""

from __future__ import annotations

import math

import torch

from cnncli.analysis.fcn import placement
from cnncli.analysis.inspection import MAX_PANELS, dft_magnitude, pca_rgb
from cnncli.fileio import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, dpi: int = 100) -> None:
    # the figure's drawn extent only: no wide white margins around a picture (score maps of tall images)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight", pad_inches=0.08))
    _pyplot().close(fig)


# ---------------------------------------------------------------------------------------------------- a run


def plot_curves(history, path: str, title: str) -> None:
    """Loss and accuracy per epoch, train and validation (a list of EpochResult)."""
    plt = _pyplot()
    ep = [h.epoch for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    losses = [v for h in history for v in (h.train_loss, h.val_loss)]
    a.plot(ep, [h.train_loss for h in history], "o-", label="train")
    a.plot(ep, [h.val_loss for h in history], "o-", label="val")
    # log scale: one spike (an early epoch, a bad batch) would flatten every later epoch on a linear axis
    log = all(math.isfinite(v) and v > 0 for v in losses)
    a.set(title="loss" + (" (log scale)" if log else ""), xlabel="epoch", yscale="log" if log else "linear")
    b.plot(ep, [h.train_accuracy for h in history], "o-")
    b.plot(ep, [h.val_accuracy for h in history], "o-")
    b.set(title="accuracy", xlabel="epoch", ylim=(0, 1.01))
    # one legend for both panels, below them: never over the accuracy lines near 1.0
    fig.legend(*a.get_legend_handles_labels(), loc="lower center", ncol=2, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    _save(fig, path)


def plot_confusion(confusion: list, classes: list[str], path: str, title: str) -> None:
    """Write a confusion matrix (rows: true, columns: predicted) as a PNG: row-normalized colours, counts in cells."""
    import numpy as np

    plt = _pyplot()

    conf = np.array(confusion)
    k = len(conf)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = max(4.0, min(0.45 * k + 2, 20))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = classes
    ax.set_xticks(range(k), names, rotation=90 if k > 10 else 45, ha="right" if k <= 10 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(conf[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class (each row sums to 1)")
    fig.tight_layout()
    _save(fig, path)


def plot_gallery(images: list[torch.Tensor], titles: list[str], path: str, title: str, per_row: int = 8) -> None:
    """Images (uint8 [C, H, W], any sizes) in a grid, each with its title: `cnn eval --gallery`'s mistakes."""
    plt = _pyplot()
    n = max(len(images), 1)
    cols = min(per_row, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.95 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, label in zip(axes.flat, images, titles):
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(label, fontsize=7)
    if not images:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------------ inside a network


def plot_kernels(weight: torch.Tensor, path: str, *, dft: bool = False, title: str = "") -> dict:
    """The grid PNG of kernels; returns the facts shown. A layer reading 3 channels shows each kernel in colour (8
    to a row); otherwise one row per kernel, one panel per input channel (at most 8, and 16 kernels when they
    have more than 3 inputs), on a diverging map centred on zero."""
    plt = _pyplot()
    out_c, in_c, kh, kw = weight.shape
    colour = in_c == 3 and not dft
    shown = min(out_c, MAX_PANELS if colour or in_c == 1 else 16)
    ins = 1 if colour else min(in_c, 8)
    per = 2 if dft else 1
    rows, cols = (math.ceil(shown / 8), min(8, shown)) if colour else (shown, ins * per)
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols + 0.8, 1.3 * rows + 0.6), squeeze=False)
    lim = float(weight.abs().max()) or 1.0
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for o in range(rows * cols if colour else shown):
        if colour:
            ax = axes[o // 8, o % 8]
            if o >= shown:
                ax.axis("off")
                continue
            w = weight[o]
            ax.imshow(((w - w.min()) / (w.max() - w.min() + 1e-12)).permute(1, 2, 0).numpy())
            continue
        for i in range(ins):
            ax = axes[o, i * per]
            ax.imshow(weight[o, i].numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            if dft:
                axes[o, i * per + 1].imshow(dft_magnitude(weight[o, i]).numpy(), cmap="magma")
            if o == 0:
                ax.set_title(f"in {i}" if in_c > 1 else "kernel", fontsize=7)
                if dft:
                    axes[o, i * per + 1].set_title("|DFT|", fontsize=7)
        axes[o, 0].set_ylabel(f"out {o}", fontsize=7)
    part = []  # a grid that shows part of the layer says which part
    if shown < out_c:
        part.append(f"first {shown} of {out_c} kernels")
    if not colour and ins < in_c:
        part.append(f"first {ins} of {in_c} input channels")
    full = "; ".join(x for x in (title, ", ".join(part)) if x)
    if full:
        fig.suptitle(full, fontsize=9)
    # the title gets its own strip (0.35 in) above the column labels, however tall the grid
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()) if full else None)
    _save(fig, path, 110)
    return {"kernels": out_c, "shown": shown, "in_channels": in_c, "in_channels_shown": ins, "kernel_size": [kh, kw]}


def plot_features(maps: dict[str, torch.Tensor], path: str, *, pca: bool = False, title: str = "") -> list[dict]:
    plt = _pyplot()
    facts = [{"layer": n, "shape": list(m.shape)} for n, m in maps.items()]
    if pca:
        fig, axes = plt.subplots(1, len(maps), figsize=(2.6 * len(maps), 3.0), squeeze=False)
        for ax, (name, m) in zip(axes[0], maps.items()):
            ax.imshow(pca_rgb(m).numpy(), interpolation="nearest")
            ax.set_title(f"{name}\n{'x'.join(map(str, m.shape))}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    else:
        cols = min(8, max(m.shape[0] for m in maps.values()))
        rows = sum(math.ceil(min(m.shape[0], MAX_PANELS) / cols) for m in maps.values())
        fig, axes = plt.subplots(rows, cols, figsize=(1.5 * cols + 0.6, 1.5 * rows + 0.5), squeeze=False)
        r = 0
        for name, m in maps.items():
            n = min(m.shape[0], MAX_PANELS)
            for k in range(math.ceil(n / cols) * cols):
                ax = axes[r + k // cols, k % cols]
                ax.set_xticks([]), ax.set_yticks([])
                if k < n:
                    ax.imshow(m[k].numpy(), cmap="viridis", interpolation="nearest")
                else:
                    ax.axis("off")
            axes[r, 0].set_ylabel(name, fontsize=8)
            r += math.ceil(n / cols)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return facts


def plot_rf(image: torch.Tensor, grad: torch.Tensor, facts: dict, path: str, title: str = "") -> None:
    plt = _pyplot()
    from matplotlib.patches import Rectangle

    img = image.float() / 255
    shown = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    (y0, y1), (x0, x1) = facts["box"]
    for ax in axes:
        ax.imshow(shown, cmap="gray" if img.shape[0] == 1 else None, vmin=0, vmax=1)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, edgecolor="red", lw=1.5))
        ax.set_xticks([]), ax.set_yticks([])
    axes[1].imshow(grad.numpy(), cmap="inferno", alpha=0.75)
    rf = facts["receptive_field"]
    axes[0].set_title(f"theoretical field {rf[0]:g}x{rf[1]:g}", fontsize=9)
    axes[1].set_title(f"measured: |d unit / d input|, {facts['effective']:.0%} of it in the central half", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- score maps


def _cells_extent(facts: dict, cells) -> tuple[float, float, float, float]:
    """Where a score map's cells lie on the image (matplotlib's extent): each cell a stride x stride square centred
    on its window's centre."""
    (hp, wp), s, (o, rf) = cells, facts["stride"], placement(facts)
    cy, cx = o[0] + (rf[0] - 1) / 2, o[1] + (rf[1] - 1) / 2
    return (
        cx - s[1] / 2 - 0.5,
        cx + (wp - 1) * s[1] + s[1] / 2 - 0.5,
        cy + (hp - 1) * s[0] + s[0] / 2 - 0.5,
        cy - s[0] / 2 - 0.5,
    )


def render_overlay(
    img: torch.Tensor,
    scores: torch.Tensor,
    facts: dict,
    classes: list[str],
    path: str,
    only_class: int | None = None,
    title: str = "",
) -> None:
    """The image with the winning class per cell (colour) and its confidence (opacity), or one class's heat map."""
    import numpy as np
    from matplotlib.patches import Patch

    plt = _pyplot()

    k = scores.shape[0]
    s, rf = facts["stride"], placement(facts)[1]
    extent = _cells_extent(facts, scores.shape[1:])
    base = img.permute(1, 2, 0).numpy()
    h, w = base.shape[:2]
    fig_w = 7 if only_class is not None else 8.5
    fig, ax = plt.subplots(figsize=(fig_w, fig_w * h / w * 0.9 + 0.6))
    ax.imshow(
        base[..., 0] if base.shape[2] == 1 else base,
        cmap="gray",
        vmin=0,
        vmax=255,
        extent=(-0.5, w - 0.5, h - 0.5, -0.5),
    )
    probs = scores.numpy()
    if only_class is None:
        cmap = plt.get_cmap("tab10" if k <= 10 else "tab20")
        colours = np.array([cmap(i % cmap.N) for i in range(k)])
        win = probs.argmax(0)
        conf = probs.max(0)
        rgba = colours[win].copy()
        rgba[..., 3] = 0.15 + 0.5 * (conf - 1 / k) / (1 - 1 / k + 1e-9)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        present = sorted(set(win.flatten().tolist()))
        handles = [Patch(color=colours[i], label=f"{classes[i]} ({(win == i).mean():.0%})") for i in present]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), title="winning class", fontsize=9)
        ax.set_title(title or f"winning class per cell (opacity = confidence), stride {s[0]}, RF {rf[0]}")
    else:
        im = ax.imshow(
            probs[only_class], extent=extent, cmap="inferno", alpha=0.55, vmin=0, vmax=1, interpolation="nearest"
        )
        fig.colorbar(im, ax=ax, fraction=0.046, label=f"P({classes[only_class]})")
        ax.set_title(title or f"score map of class '{classes[only_class]}', stride {s[0]}, RF {rf[0]}")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    fig.tight_layout()
    _save(fig, path)


# ---------------------------------------------------------------------------------------- class activation maps

CAM_PANEL_SIDE = 640  # pixels: a camera photo is shown (not stored) at most this large per panel


def plot_cam(img: torch.Tensor, maps: list[torch.Tensor], labels: list[str], path: str, title: str = "") -> None:
    """The image with one class activation map per panel over it (jet, half transparent, as pytorch-grad-cam's
    `show_cam_on_image`), each panel titled with its class and probability."""
    import torch.nn.functional as F

    from cnncli.data.images import resize

    plt = _pyplot()
    h, w = img.shape[1:]
    f = min(1.0, CAM_PANEL_SIDE / max(h, w))
    if f < 1.0:  # drawn smaller; the .npy keeps the full size
        h, w = max(1, round(h * f)), max(1, round(w * f))
        img = resize(img, (h, w))
    maps = [
        m
        if tuple(m.shape) == (h, w)
        else F.interpolate(m[None, None], size=(h, w), mode="bilinear", antialias=True)[0, 0]
        for m in maps
    ]
    base = img.float().div(255).permute(1, 2, 0).expand(h, w, 3).numpy()
    panel = 3.6
    fig, axes = plt.subplots(1, len(maps), figsize=(panel * len(maps), panel * h / w + 0.5), squeeze=False)
    jet = plt.get_cmap("jet")
    for ax, cam, label in zip(axes[0], maps, labels):
        heat = jet(cam.clamp(0, 1).numpy())[..., :3]
        ax.imshow(0.5 * heat + 0.5 * base)
        ax.set_title(label, fontsize=9)
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)
