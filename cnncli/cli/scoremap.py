"""`cnn scoremap`: spatial class score maps of a classifier slid over larger images."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    DeviceOpt,
    JsonOpt,
    choice,
    emit_json,
    epilog,
    log,
    log_device,
    log_notes,
    model_options,
    pick_device,
    say,
)

SCENES = ("lines",)
EPILOG = (
    "Examples:\n\n  cnn scoremap runs/train/best.pt scene.png              # converts on the fly\n\n"
    "  cnn scoremap runs/train/best-fcn.pt a.png b.jpg -o maps --class cat\n\n"
    "  cnn scoremap runs/lines/best.pt --scene lines -o maps  # generate a lines scene and map it\n\n"
    "Writes per image NAME.npy (class probabilities [classes, H', W']) and NAME-scoremap.png (overlay)."
)


MAX_SCENE_SIDE = 8192  # a generated scene: 64 M pixels, a few hundred MB of score maps at most


@app.command("scoremap", epilog=epilog(EPILOG))
@model_options()
def scoremap_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A classifier (checkpoint or state dict, converted on the fly) or a checkpoint from cnn fcn.",
        ),
    ],
    images: Annotated[
        Optional[list[str]], typer.Argument(help="Images at least as large as the training size.")
    ] = None,
    output: Annotated[str, typer.Option("-o", "--output", help="Output folder.")] = "scoremaps",
    class_name: Annotated[
        Optional[str], typer.Option("--class", help="Show this class's heat map instead of the winners.")
    ] = None,
    scene: Annotated[
        Optional[str],
        typer.Option(
            "--scene",
            click_type=choice("scene", SCENES),
            help="Generate a test scene (regions of horizontal/vertical lines).",
        ),
    ] = None,
    scene_size: Annotated[str, typer.Option("--scene-size", help="Scene size HxW.")] = "256x256",
    seed: Annotated[int, typer.Option("--seed", help="Scene seed.")] = 0,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Write per image a .npy score map [classes, H', W'] and a PNG overlay of the winning class per cell."""
    req = opts.check(checkpoint)
    images, (sh, sw) = _checked(images, scene, output, scene_size)
    from cnncli.engine.scoremap import ScoreMapper, images_from, lines_scene, output_stems
    from cnncli.models.open import open_model

    dev = pick_device(device)
    opened = open_model(checkpoint, req)
    opened.require_rebuildable("scoremap")
    mapper = ScoreMapper.from_opened(opened, dev)
    only = mapper.class_index(class_name)
    jobs = images_from(images, opened.input_size[0])  # every image read and checked before anything is written
    for path, img in jobs:
        mapper.check_size(path, img)
    mapper.check_outputs(
        images, output, output_stems(([f"scene-lines-{seed}.png"] if scene else []) + images)[1 if scene else 0 :], only
    )
    log_notes(opened)
    if not json_out:
        log_device(device, dev)
    if mapper.converted_diff is not None:
        log(f"converted {checkpoint} on the fly (max |diff| {mapper.converted_diff:.2e})")
    os.makedirs(output, exist_ok=True)
    regions = None
    if scene:
        path, img, regions = lines_scene(output, (sh, sw), seed, opened.input_size[0])
        log(f"scene: {path}")
        jobs.insert(0, (path, img))
    results = []
    for i, ((path, img), stem) in enumerate(zip(jobs, output_stems([p for p, _ in jobs]))):
        r = mapper.run(path, img, output, only=only, regions=regions if (scene and i == 0) else None, stem=stem)
        results.append(r)
        if not json_out:
            agree = (
                ""
                if r.region_agreement is None
                else f", agrees with the scene's regions on {r.region_agreement:.1%} of cells"
            )
            say(f"{path}: score map {'x'.join(map(str, r.scores_shape))} -> {r.png}{agree}")
    if json_out:
        maps = [r.as_json() for r in results]
        emit_json(maps[0] if len(maps) == 1 else {"images": maps})


def _checked(images, scene, output: str, scene_size: str) -> tuple[list[str], tuple[int, int]]:
    """The images (each a readable file), the -o folder (usable) and the scene size, before any work is done."""
    from cnncli.analysis.arith import parse_size
    from cnncli.cli._common import check_file
    from cnncli.errors import UsageError
    from cnncli.fileio import check_output_folder

    images = list(images or [])
    if not images and not scene:
        raise UsageError("give at least one IMAGE, or --scene lines")
    for im in images:
        check_file(im, "image")
    if os.path.lexists(output) and not os.path.isdir(output):
        raise UsageError(f"cannot use {output}: it is a file", "-o takes a folder for the score maps")
    check_output_folder(output, "-o folder")
    _, sh, sw = parse_size(scene_size)
    if scene and max(sh, sw) > MAX_SCENE_SIDE:
        raise UsageError(f"--scene-size {sh}x{sw} is too large", f"at most {MAX_SCENE_SIDE} pixels a side")
    return images, (sh, sw)
