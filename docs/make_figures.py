"""Regenerate the pictures in docs/img (python docs/make_figures.py; trains a linenet on `lines`, ~15 s)."""

import os
import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.patches as patches  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
IMG = os.path.join(HERE, "img")


def lenet_sliding() -> None:
    """A 64x64 input, the 32x32 windows of a few output cells (stride 4), and the 9x9 score map."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.2), gridspec_kw={"width_ratios": [1.3, 1]})
    a.set(xlim=(-1, 65), ylim=(65, -1), title="64x64 input: each output cell sees a 32x32 window")
    a.add_patch(patches.Rectangle((0, 0), 64, 64, fill=False, lw=1.5))
    for (i, j), colour in (((0, 0), "tab:blue"), ((0, 1), "tab:orange"), ((4, 8), "tab:green")):
        a.add_patch(patches.Rectangle((4 * j, 4 * i), 32, 32, fill=True, alpha=0.18, color=colour))
        a.add_patch(patches.Rectangle((4 * j, 4 * i), 32, 32, fill=False, lw=2, color=colour))
        a.text(4 * j + 1, 4 * i + 3, f"cell ({i},{j})", color=colour, fontsize=9, va="top")
    a.set_aspect("equal")
    b.set(xlim=(-0.5, 8.5), ylim=(8.5, -0.5), title="10 x 9 x 9 score map (stride 4)")
    for i in range(9):
        for j in range(9):
            b.add_patch(patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=0.5, color="grey"))
    for (i, j), colour in (((0, 0), "tab:blue"), ((0, 1), "tab:orange"), ((4, 8), "tab:green")):
        b.add_patch(patches.Rectangle((j - 0.5, i - 0.5), 1, 1, color=colour, alpha=0.7))
    b.set_aspect("equal")
    fig.suptitle("LeNet trained on 32x32, converted: flatten+fc(120) -> conv 16x5x5, fc(84), fc(10) -> 1x1 convs")
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, "fcn-lenet.png"), dpi=80)


def lines_scoremap() -> None:
    tmp = tempfile.mkdtemp()
    env = {**os.environ, "CI": "1"}
    subprocess.run([sys.executable, "-m", "cnncli", "train", "linenet", "--data", "lines", "--project", tmp, "--name", "l"],
                   check=True, env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "cnncli", "scoremap", os.path.join(tmp, "l", "best.pt"), "--scene", "lines",
                    "-o", tmp], check=True, env=env)
    os.replace(os.path.join(tmp, "scene-lines-0-scoremap.png"), os.path.join(IMG, "scoremap-lines.png"))


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    lenet_sliding()
    lines_scoremap()
