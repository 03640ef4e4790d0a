"""`cnn scoremap`: spatial class score maps of a classifier slid over larger images."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import DeviceOpt, JsonOpt, emit_json, log

EPILOG = ("Examples:\n\n  cnn scoremap runs/train/best.pt scene.png              # converts on the fly\n\n"
          "  cnn scoremap runs/train/best-fcn.pt a.png b.jpg -o maps --class cat\n\n"
          "  cnn scoremap runs/lines/best.pt --scene lines -o maps  # generate a lines scene and map it\n\n"
          "Writes per image NAME.npy (class probabilities [classes, H', W']) and NAME.png (overlay).")


@app.command("scoremap", epilog=EPILOG)
def scoremap_cmd(
    checkpoint: Annotated[str, typer.Argument(help="A classifier checkpoint (converted on the fly) or one from cnn fcn.")],
    images: Annotated[Optional[list[str]], typer.Argument(help="Images at least as large as the training size.")] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="Output folder.")] = "scoremaps",
    class_name: Annotated[Optional[str], typer.Option("--class", help="Show this class's heat map instead of the winners.")] = None,
    scene: Annotated[Optional[str], typer.Option("--scene", help="Generate a test scene: 'lines' (regions of horizontal/vertical lines).")] = None,
    scene_size: Annotated[str, typer.Option("--scene-size", help="Scene size HxW.")] = "256x256",
    seed: Annotated[int, typer.Option("--seed", help="Scene seed.")] = 0,
    device: DeviceOpt = "cpu",
    json_out: JsonOpt = False,
) -> None:
    """Write per image a .npy score map [classes, H', W'] and a PNG overlay of the winning class per cell."""
    from cnncli.cli._common import check_file
    from cnncli.errors import UsageError

    check_file(checkpoint, "checkpoint")
    images = list(images or [])
    if not images and not scene:
        raise UsageError("give at least one IMAGE, or --scene lines")
    if scene and scene != "lines":
        raise UsageError(f"unknown scene {scene!r}", "the generator knows: lines")
    for im in images:
        check_file(im, "image")
    import numpy as np
    import torch

    from cnncli.arith import parse_size
    from cnncli.engine.checkpoint import atomic_write, build_from_checkpoint, load_checkpoint
    from cnncli.engine.device import pick_device
    from cnncli.fcn import load_image, normalize, render_overlay, score_map, to_fully_convolutional

    ckpt = load_checkpoint(checkpoint)
    spec = ckpt["model"]
    c, th, tw = spec["in_channels"], *spec["image_size"]
    model = build_from_checkpoint(ckpt)
    facts = ckpt.get("fcn")
    if not facts:
        conv = to_fully_convolutional(model, (c, th, tw), verify=True)
        model, facts = conv.model, conv.as_dict()
        log(f"converted {checkpoint} on the fly (max |diff| {conv.max_abs_diff:.2e})")
    classes = list(ckpt.get("classes") or [str(i) for i in range(spec["num_classes"])])
    only = None
    if class_name is not None:
        if class_name not in classes:
            raise UsageError(f"unknown class {class_name!r}", "classes: " + ", ".join(classes[:20]))
        only = classes.index(class_name)
    norm = ckpt.get("normalization") or {"mean": [0.5] * c, "std": [0.25] * c}
    dev = pick_device(device, quiet=True)
    model = model.to(dev).eval()
    os.makedirs(output, exist_ok=True)

    jobs: list[tuple[str, torch.Tensor, torch.Tensor | None]] = []
    if scene:
        from PIL import Image

        from cnncli.data.lines import scene as make_scene

        _, sh, sw = parse_size(scene_size)
        img, labels = make_scene(sh, sw, seed=seed)
        if c != 1:
            img = img.expand(c, -1, -1).contiguous()
        path = os.path.join(output, f"scene-lines-{seed}.png")
        Image.fromarray(img[0].numpy()).save(path)
        np.save(os.path.join(output, f"scene-lines-{seed}-regions.npy"), labels.numpy())
        log(f"scene: {path}")
        jobs.append((path, img, labels))
    for path in images:
        jobs.append((path, load_image(path, c), None))

    results = []
    for path, img, labels in jobs:
        if img.shape[1] < th or img.shape[2] < tw:
            raise UsageError(f"{path} is {img.shape[1]}x{img.shape[2]}, smaller than the training size {th}x{tw}",
                             "score maps need images at least as large as the training images")
        scores = score_map(model, normalize(img, norm["mean"], norm["std"]).to(dev)).cpu()
        stem = os.path.splitext(os.path.basename(path))[0]
        npy = os.path.join(output, stem + ".npy")
        png = os.path.join(output, stem + ("-" + class_name if class_name else "") + "-scoremap.png")
        arr = scores.numpy().astype(np.float32)

        def write_npy(tmp: str, arr=arr) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to a path
                np.save(f, arr)

        atomic_write(npy, write_npy)
        render_overlay(img, scores, facts, classes, png, only)
        win = scores.argmax(0)
        counts = {classes[i]: int((win == i).sum()) for i in range(len(classes)) if int((win == i).sum())}
        r = {"image": path, "scores_shape": list(scores.shape), "stride": list(facts["stride"]),
             "receptive_field": list(facts["receptive_field"]), "offset": list(facts["offset"]),
             "argmax_counts": counts, "npy": npy, "png": png}
        if labels is not None:
            r["region_agreement"] = region_agreement(win, labels, facts)
        results.append(r)
        if not json_out:
            agree = f", agrees with the scene's regions on {r['region_agreement']:.1%} of cells" if labels is not None else ""
            print(f"{path}: score map {'x'.join(map(str, scores.shape))} -> {png}{agree}")
    if json_out:
        emit_json(results[0] if len(results) == 1 else {"images": results})


def region_agreement(win, labels, facts) -> float:
    """Fraction of cells whose winning class is the region label at the centre of the cell's window."""
    import torch

    s, o, rf = facts["stride"], facts["offset"], facts["receptive_field"]
    hp, wp = win.shape
    ys = (o[0] + (rf[0] - 1) // 2 + torch.arange(hp) * s[0]).clamp(0, labels.shape[0] - 1)
    xs = (o[1] + (rf[1] - 1) // 2 + torch.arange(wp) * s[1]).clamp(0, labels.shape[1] - 1)
    truth = labels[ys][:, xs]
    return float((truth == win).float().mean())
