"""`cnn inspect kernels|features|rf|cam`: pictures of what is inside a network."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    DeviceOpt,
    JsonOpt,
    check_file,
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
from cnncli.config import CAM_METHODS

inspect_app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Pictures of what is inside a network: kernels, feature maps, receptive fields, class activation maps.",
)
app.add_typer(inspect_app, name="inspect")

OutOpt = Annotated[str, typer.Option("-o", "--output", help="Folder for the PNG files.")]
ModelArg = Annotated[
    str,
    typer.Argument(
        help="Any model form: checkpoint, state dict, registry name (random weights "
        "unless --weights), TorchScript is not inspectable."
    ),
]
ImageArg = Annotated[str, typer.Argument(help="An image file.")]


def _open(model: str, opts):
    """The model through the shared opening sequence; inspect rewrites nothing but needs the real layers."""
    opened = opts.open(model)
    opened.require_rebuildable("inspect")
    return opened


def _image(opened, path: str):
    """The image as the model sees it: uint8 [C, H, W] at the model's input size, and normalized."""

    from cnncli.cli._common import check_file
    from cnncli.models.open import ModelRequest, resolve_preprocess

    check_file(path, "image")
    c, h, w = opened.input_size
    from cnncli.data.images import load_resized

    img = load_resized(path, c, (h, w))
    pre = opened.preprocess or resolve_preprocess(opened.spec, ModelRequest(), {})[0]
    return img, pre.normalize(img)


@inspect_app.command(
    "kernels",
    epilog=epilog(
        "Examples:\n\n  cnn inspect kernels runs/lines/best.pt --dft\n\n"
        "  cnn inspect kernels tv:resnet18 --layer layer1.0.conv1 -o kernels"
    ),
)
@model_options(skip=("input_size", "mean", "std", "classes"))
def kernels_cmd(
    model: ModelArg,
    layer: Annotated[Optional[str], typer.Option("--layer", help="A Conv2d layer (default: the first).")] = None,
    dft: Annotated[
        bool, typer.Option("--dft", help="Each kernel's DFT magnitude beside it (zero frequency centred).")
    ] = False,
    output: OutOpt = "inspect",
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """A grid PNG of a conv layer's kernels; small layers are also printed as numbers."""
    from cnncli.fileio import check_output_folder

    check_output_folder(output, "-o folder")  # before any work: nothing is run for an unusable -o
    from cnncli.analysis.inspection import conv_weight, dft_energy_axes, out_path
    from cnncli.plots import plot_kernels

    opened = _open(model, opts)
    name, weight = conv_weight(opened.model, layer)
    log_notes(opened)
    path = out_path(output, f"kernels-{name.replace('.', '_')}{'-dft' if dft else ''}.png")
    facts = {"layer": name, "file": path, **plot_kernels(weight, path, dft=dft, title=f"{opened.name}: {name}")}
    if weight.shape[1] == 1:  # the orientation each single-channel kernel prefers, from its spectrum
        facts["dft_energy"] = [dict(zip(("vertical_freq", "horizontal_freq"), dft_energy_axes(k[0]))) for k in weight]
    head = _last_linear(opened.model)
    if json_out:
        emit_json(
            {**facts, "files": [path], "weights": weight.tolist() if weight.numel() <= 400 else None, "head": head}
        )
        return
    say(
        f"wrote {path}: {facts['kernels']} kernels of {facts['in_channels']} channel(s), "
        f"{facts['kernel_size'][0]}x{facts['kernel_size'][1]}"
    )
    if weight.numel() <= 400:
        for o, k in enumerate(weight):
            say(f"kernel {o}:" + "".join("\n  " + " ".join(f"{v:6.2f}" for v in row) for ch in k for row in ch))
    if head is not None:
        say(
            f"last Linear layer {head['layer']} W ="
            + "".join("\n  " + " ".join(f"{v:6.2f}" for v in row) for row in head["weight"])
        )


def _last_linear(model) -> dict | None:
    """The final Linear layer's matrix when it is small (the chapter prints the line detector's 2x2 W)."""
    import torch.nn as nn

    last = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            last = (n, m)
    if last is None or last[1].weight.numel() > 64:
        return None
    return {"layer": last[0], "weight": last[1].weight.detach().float().tolist()}


@inspect_app.command(
    "features",
    epilog=epilog(
        "Examples:\n\n  cnn inspect features runs/lines/best.pt img.png\n\n"
        "  cnn inspect features tv:resnet18 cat.jpg --pca --in 3x224x224"
    ),
)
@model_options(skip=("classes",))
def features_cmd(
    model: ModelArg,
    image: ImageArg,
    layers: Annotated[
        Optional[str], typer.Option("--layers", help="Comma-separated layer names (default: each top-level stage).")
    ] = None,
    pca: Annotated[
        bool, typer.Option("--pca", help="Each layer's channels reduced to 3 principal components, as RGB.")
    ] = False,
    output: OutOpt = "inspect",
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Feature maps of chosen layers for one image, as grids or (--pca) as RGB images side by side."""
    from cnncli.analysis.inspection import feature_maps, out_path
    from cnncli.plots import plot_features

    dev, opened, _, x = _prepared(model, image, output, device, opts)
    names = [n.strip() for n in layers.split(",") if n.strip()] if layers else None
    maps = feature_maps(opened.model, x, names)
    log_notes(opened)
    if not json_out:
        log_device(device, dev)
    stem = os.path.splitext(os.path.basename(image))[0]
    path = out_path(output, f"features-{stem}{'-pca' if pca else ''}.png")
    facts = plot_features(maps, path, pca=pca, title=f"{opened.name} on {os.path.basename(image)}")
    if json_out:
        emit_json({"files": [path], "layers": facts})
        return
    say(f"wrote {path}: " + ", ".join(f"{f['layer']} {'x'.join(map(str, f['shape']))}" for f in facts))


@inspect_app.command(
    "rf",
    epilog=epilog(
        "Examples:\n\n  cnn inspect rf runs/lines/best.pt img.png\n\n"
        "  cnn inspect rf tv:resnet18 cat.jpg --layer layer3 --at 7,7 --in 3x224x224"
    ),
)
@model_options(skip=("classes",))
def rf_cmd(
    model: ModelArg,
    image: ImageArg,
    layer: Annotated[
        Optional[str], typer.Option("--layer", help="Layer of the unit (default: the deepest spatial one).")
    ] = None,
    at: Annotated[
        Optional[str], typer.Option("--at", help="Unit position Y,X in that layer's map (default: the centre).")
    ] = None,
    output: OutOpt = "inspect",
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """One unit's theoretical receptive field on the image, next to the measured one (input-gradient magnitude)."""
    from cnncli.analysis.inspection import central_share, default_rf_layer, measured_field, out_path, unit_field
    from cnncli.plots import plot_rf

    pos = _position(at)
    dev, opened, img, x = _prepared(model, image, output, device, opts)
    layer = layer or default_rf_layer(opened.model, x)
    grad, pos, size, note = measured_field(opened.model, x, layer, pos)
    grad = grad.cpu()
    if note:
        log(note)
    facts = {
        "layer": layer,
        "at": list(pos),
        "map": list(size),
        **unit_field(opened.model, opened.input_size, layer, pos),
    }
    facts["effective"] = central_share(grad, facts["box"])
    log_notes(opened)
    if not json_out:
        log_device(device, dev)
    stem = os.path.splitext(os.path.basename(image))[0]
    path = out_path(output, f"rf-{stem}-{layer.replace('.', '_')}.png")
    plot_rf(img, grad, facts, path, title=f"{opened.name}: unit {pos[0]},{pos[1]} of {layer}")
    if json_out:
        emit_json({**facts, "files": [path]})
        return
    rf = facts["receptive_field"]
    say(
        f"wrote {path}: unit {pos[0]},{pos[1]} of {layer} ({size[0]}x{size[1]} map): theoretical field "
        f"{rf[0]:g}x{rf[1]:g}, stride {facts['jump'][0]:g}; {facts['effective']:.0%} of the measured gradient lies "
        "in the central half of it"
    )


def _position(at: str | None) -> tuple[int, int] | None:
    """--at Y,X as a pair (None: the centre)."""
    from cnncli.errors import UsageError

    if at is None:
        return None
    parts = at.split(",")
    try:
        if len(parts) == 2:
            return int(parts[0]), int(parts[1])
    except ValueError:
        pass
    raise UsageError(f"--at takes Y,X, got {at!r}", "e.g. --at 3,4")


def _prepared(model: str, image: str, output: str, device: str, opts):
    """(device, opened model on it, the image as uint8, its normalised batch on the device), once the -o folder is
    known to be usable: nothing is run for an unusable one."""
    from cnncli.fileio import check_output_folder

    check_output_folder(output, "-o folder")
    dev = pick_device(device)
    opened = _open(model, opts)
    img, x = _image(opened, image)
    opened.model.to(dev)
    return dev, opened, img, x.to(dev)


CAM_EPILOG = (
    "Examples:\n\n  cnn inspect cam runs/train/best.pt photo.jpg               # the top 3 classes side by side\n\n"
    "  cnn inspect cam tv:resnet18 --weights resnet18.pth cat.jpg --class 281 --method gradcam++\n\n"
    "  cnn inspect cam runs/lines/best.pt a.png b.png --layer features -o cams --json\n\n"
    "Writes per image NAME-cam.npy (the map of the shown class, or the top class, at the image's size, in 0..1) and "
    "NAME-cam.png (the image with the maps over it)."
)
CAM_BATCH = 16  # images per forward/backward pass
CAM_TOP = 3  # classes shown per image without --class


@inspect_app.command("cam", epilog=epilog(CAM_EPILOG))
@model_options(skip=("classes",))
def cam_cmd(
    model: ModelArg,
    images: Annotated[list[str], typer.Argument(help="Image files (any size: each is resized to the model's input).")],
    class_name: Annotated[
        Optional[str], typer.Option("--class", help="Explain this class (default: the top 3 of each image).")
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            click_type=choice("method", CAM_METHODS),
            help="gradcam (default), gradcam++, layercam (a weight per position) or scorecam (no gradients; one "
            "forward pass per channel: slow).",
        ),
    ] = "gradcam",
    layer: Annotated[
        Optional[str],
        typer.Option(
            "--layer",
            help="Target layer (default: found from the model, the last spatial map before "
            "global pooling or attention; printed).",
        ),
    ] = None,
    output: Annotated[
        str, typer.Option("-o", "--output", help="Folder for the .npy maps and PNG overlays.")
    ] = "inspect",
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Class activation maps: where in each image the evidence for a class lies (Grad-CAM and its kin)."""
    from cnncli.fileio import check_output_folder

    for path in images:
        check_file(path, "image")
    check_output_folder(output, "-o folder")
    dev = pick_device(device)
    opened = _open(model, opts)
    from cnncli.engine.cam import CamJob

    job = CamJob.prepare(opened, images, output, dev, class_name=class_name, method=method, layer=layer)
    log_notes(opened)
    if not json_out:
        log_device(device, dev)
    log(f"target layer: {job.layer} ({job.layout.describe()}){'' if layer else ', found from the model'}")
    results = job.run(batch=CAM_BATCH, top=CAM_TOP, on_blank=log)
    if json_out:
        emit_json({"images": [r.as_json() for r in results]})
        return
    for r in results:
        say(f"{r.image}: {r.cls} ({r.probability:.1%}) {r.method} at {r.layer} -> {r.png}, {r.npy}")
