"""`cnn predict`: what the model says about images."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    Column,
    DeviceOpt,
    JsonOpt,
    console,
    emit_json,
    epilog,
    is_terminal,
    log,
    log_device,
    model_options,
    pick_device,
    render_table,
)

EPILOG = (
    "Examples:\n\n  cnn predict runs/train/best.pt photo.jpg\n\n"
    "  cnn predict runs/train/best.pt my_photos/ --topk 3          # a folder, searched recursively\n\n"
    "  cnn predict runs/train/best.onnx 'shots/**/*.png' --json     # ONNX Runtime; quote globs\n\n"
    "  cnn predict model.pt imgs/ --in 3x224x224 --classes names.txt --csv predictions.csv\n\n"
    "Each image is resized to the model's input size and normalized as the model file says (or as --in, "
    "--mean, --std say for files that do not record it)."
)


@app.command("predict", epilog=epilog(EPILOG))
@model_options()
def predict_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="Any model file (checkpoint, state dict, TorchScript, .pt2, .onnx) or a registry name with --weights."
        ),
    ],
    sources: Annotated[
        list[str], typer.Argument(metavar="SOURCE...", help="Image files, folders (recursively), glob patterns.")
    ],
    topk: Annotated[
        int,
        typer.Option("--topk", help="Classes per image, most probable first (at most the number of classes).", min=1),
    ] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per batch.", min=1)] = 64,
    csv: Annotated[Optional[str], typer.Option("--csv", help="Also write one row per image to this CSV file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing --csv file.")] = False,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Top-k classes with probabilities for each image: a table, --json or --csv."""
    from cnncli.engine.predict import image_files, predict
    from cnncli.fileio import check_output

    req = opts.request()
    images = image_files(sources)  # expanded once; --csv may replace none of them (nor the model)
    if csv:
        check_output(csv, [model, *images], force, flag="--csv")
    from cnncli.fileio import is_onnx_file

    dev = None if is_onnx_file(model) else pick_device(device)
    with _progress() as bar:
        res = predict(
            model,
            images,
            request=req,
            topk=topk,
            batch_size=batch_size,
            device=dev or "cpu",
            progress=bar,
            expanded=True,
        )
    for note in res.notes:
        log(note)
    if dev is not None and not json_out:
        log_device(device, dev)
    if csv:
        _write_csv(csv, res)
        log(f"wrote {csv}")
    if json_out:
        emit_json(res.as_dict())
        return
    _print_predictions(res)


def _print_predictions(res) -> None:
    k = max((len(p.topk) for p in res.predictions), default=0)
    rows = [
        [
            p.image,
            p.topk[0]["class"],
            f"{p.topk[0]['prob']:.3f}",
            ", ".join(f"{t['class']} {t['prob']:.3f}" for t in p.topk[1:]),
        ]
        for p in res.predictions
    ]
    columns = [Column("image"), Column("class"), Column("prob", right=True)] + ([Column("next")] if k > 1 else [])
    render_table(
        columns,
        [r[: len(columns)] for r in rows],
        notes=[f"{len(rows)} images, {res.images_per_second:,.0f} img/s on {res.device}"],
    )


def _write_csv(path: str, res) -> None:
    from cnncli.fileio import write_csv

    k = max((len(p.topk) for p in res.predictions), default=0)
    header = ["image"] + [f"{what}{i + 1}" for i in range(k) for what in ("class", "prob")]
    rows = [[p.image] + [v for t in p.topk for v in (t["class"], f"{t['prob']:.6f}")] for p in res.predictions]
    write_csv(path, header, rows)


class _progress:
    """A progress bar on a terminal for more than a few batches; nothing otherwise (CI logs stay short)."""

    def __enter__(self):
        self.bar = self.task = None
        if is_terminal(sys.stderr):
            from rich.progress import Progress

            self.bar = Progress(transient=True, console=console(stderr=True))
            self.bar.start()
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None or total < 256:
            return
        if self.task is None:
            self.task = self.bar.add_task("predict", total=total)
        self.bar.update(self.task, completed=done)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
