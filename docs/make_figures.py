"""Regenerate the pictures in docs/img (python docs/make_figures.py; trains a linenet on `lines` twice, ~40 s)."""

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
    subprocess.run(
        [sys.executable, "-m", "cnncli", "train", "linenet", "--data", "lines", "--project", tmp, "--name", "l"],
        check=True,
        env=env,
        capture_output=True,
    )
    subprocess.run(
        [sys.executable, "-m", "cnncli", "scoremap", os.path.join(tmp, "l", "best.pt"), "--scene", "lines", "-o", tmp],
        check=True,
        env=env,
    )
    os.replace(os.path.join(tmp, "scene-lines-0-scoremap.png"), os.path.join(IMG, "scoremap-lines.png"))


def lines_experiments() -> None:
    """Samples of lines, lines-modulated, its unmodulated control and lines-ood (docs/inspect.md)."""
    from cnncli.data import lines

    rows = [
        ("lines", lines.generate),
        ("lines-modulated", lines.modulated),
        ("control: unmodulated", lambda n, seed: lines.modulated(n, seed, period=None)),
        ("lines-ood", lines.ood),
    ]
    fig, axes = plt.subplots(len(rows), 8, figsize=(12, 6.4))
    for r, (name, make) in enumerate(rows):
        x, y = make(8, seed=4)
        for i in range(8):
            ax = axes[r, i]
            ax.imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(lines.CLASSES[int(y[i])], fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, "lines-experiments.png"), dpi=90)


def inspect_pictures() -> None:
    """The pictures of docs/inspect.md, made by the commands it shows."""
    import numpy as np
    from PIL import Image

    from cnncli.data import lines

    tmp = tempfile.mkdtemp()
    env = {**os.environ, "CI": "1"}

    def cnn(*args):
        subprocess.run([sys.executable, "-m", "cnncli", *args], check=True, env=env, capture_output=True)

    cnn("train", "linenet", "--data", "lines", "--project", tmp, "--name", "l")
    ck = os.path.join(tmp, "l", "best.pt")
    x, _ = lines.generate(1, seed=3)
    Image.fromarray(x[0, 0].numpy()).save(os.path.join(tmp, "line.png"))
    scene, _ = lines.scene(128, 128, seed=1)
    Image.fromarray(np.repeat(scene[0].numpy()[..., None], 3, 2)).save(os.path.join(tmp, "scene.png"))
    out = os.path.join(tmp, "out")
    cnn("inspect", "kernels", ck, "--dft", "-o", out)
    cnn("inspect", "features", ck, os.path.join(tmp, "line.png"), "-o", out)
    cnn("inspect", "rf", ck, os.path.join(tmp, "line.png"), "-o", out)
    cnn("inspect", "features", "tv:resnet18", os.path.join(tmp, "scene.png"), "--pca", "--in", "3x128x128", "-o", out)
    cnn(
        "inspect",
        "rf",
        "tv:resnet18",
        os.path.join(tmp, "scene.png"),
        "--layer",
        "layer2",
        "--in",
        "3x128x128",
        "-o",
        out,
    )
    for src, dst in (
        ("kernels-features_0-dft.png", "inspect-kernels-linenet.png"),
        ("features-line.png", "inspect-features-linenet.png"),
        ("rf-line-features_1.png", "inspect-rf-linenet.png"),
        ("features-scene-pca.png", "inspect-features-resnet18-pca.png"),
        ("rf-scene-layer2.png", "inspect-rf-resnet18.png"),
    ):
        os.replace(os.path.join(out, src), os.path.join(IMG, dst))


def cam_pictures() -> None:
    """The class activation maps of docs/inspect.md: the line detector on lines in a box and on modulated lines, and
    a small CNN trained on a folder of coloured shapes (the images tests/test_cam.py measures)."""
    import numpy as np
    from PIL import Image

    from cnncli.data import lines

    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from test_cam import _shape_image

    tmp = tempfile.mkdtemp()
    env = {**os.environ, "CI": "1"}

    def cnn(*args):
        subprocess.run([sys.executable, "-m", "cnncli", *map(str, args)], check=True, env=env, capture_output=True)

    cnn("train", "linenet", "--data", "lines", "--project", tmp, "--name", "l")
    img = 0.15 * np.random.default_rng(1).random((32, 32))
    img[12:14, 14:26] = img[17:19, 14:26] = 0.9  # two horizontal lines in a 12x12 box at (10, 14)
    Image.fromarray((img * 255).astype(np.uint8)).save(os.path.join(tmp, "box.png"))
    x, _ = lines.modulated(1, seed=2)
    Image.fromarray(x[0, 0].numpy()).save(os.path.join(tmp, "dashed.png"))
    out = os.path.join(tmp, "out")
    cnn(
        "inspect",
        "cam",
        os.path.join(tmp, "l", "best.pt"),
        os.path.join(tmp, "box.png"),
        os.path.join(tmp, "dashed.png"),
        "-o",
        out,
    )
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 8)):
        for k in ("red", "green", "blue"):
            os.makedirs(os.path.join(tmp, "shapes", split, k))
            for i in range(n):
                Image.fromarray(_shape_image(k, 48, rng)[0]).save(os.path.join(tmp, "shapes", split, k, f"{i}.png"))
    cnn(
        "train",
        "smallcnn",
        "--data",
        "folder:" + os.path.join(tmp, "shapes"),
        "--epochs",
        "4",
        "--project",
        tmp,
        "--name",
        "s",
    )
    Image.fromarray(_shape_image("blue", 48, np.random.default_rng(7))[0]).save(os.path.join(tmp, "cross.png"))
    cnn("inspect", "cam", os.path.join(tmp, "s", "best.pt"), os.path.join(tmp, "cross.png"), "-o", out)
    for src, dst in (
        ("box-cam.png", "inspect-cam-linenet.png"),
        ("dashed-cam.png", "inspect-cam-modulated.png"),
        ("cross-cam.png", "inspect-cam-shapes.png"),
    ):
        os.replace(os.path.join(out, src), os.path.join(IMG, dst))


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    lenet_sliding()
    lines_scoremap()
    lines_experiments()
    inspect_pictures()
    cam_pictures()
