"""Pictures a run writes: training curves and confusion matrices (matplotlib, Agg backend, atomic writes)."""

from __future__ import annotations

from cnncli.fileio import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history, path: str, title: str) -> None:
    """Loss and accuracy per epoch, train and validation (a list of EpochResult)."""
    plt = _pyplot()
    ep = [h.epoch for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(ep, [h.train_loss for h in history], "o-", label="train")
    a.plot(ep, [h.val_loss for h in history], "o-", label="val")
    a.set(title="loss", xlabel="epoch")
    a.legend()
    b.plot(ep, [h.train_accuracy for h in history], "o-", label="train")
    b.plot(ep, [h.val_accuracy for h in history], "o-", label="val")
    b.set(title="accuracy", xlabel="epoch", ylim=(0, 1.01))
    b.legend()
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)


def plot_confusion(result: dict, path: str, title: str = "") -> None:
    """Write the confusion matrix as a PNG (row-normalized colours, counts in cells)."""
    import numpy as np

    plt = _pyplot()

    conf = np.array(result["confusion"])
    k = len(conf)
    norm = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    size = max(4.0, min(0.45 * k + 2, 20))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    names = result["classes"]
    ax.set_xticks(range(k), names, rotation=90 if k > 10 else 45, ha="right" if k <= 10 else "center")
    ax.set_yticks(range(k), names)
    ax.set(xlabel="predicted", ylabel="true", title=title or f"accuracy {result['accuracy']:.2%}")
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
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
