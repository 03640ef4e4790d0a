"""`cnn eval`: measure a checkpoint or an exported ONNX model on a dataset split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import (
    DEFAULT_DEVICE,
    Column,
    DeviceOpt,
    JsonOpt,
    check_file,
    choice,
    dims,
    emit_json,
    epilog,
    log,
    log_device,
    model_options,
    pick_device,
    render_table,
    say,
)

SPLITS = ("test", "val", "train")
EPILOG = (
    "Examples:\n\n  cnn eval runs/train/best.pt --data digits\n\n"
    "  cnn eval runs/train/best.pt --data cifar10 --confusion confusion.png --min-accuracy 0.9\n\n"
    "  cnn eval runs/train/best.pt --data folder:~/photos --gallery mistakes/   # the misclassified, as a grid\n\n"
    "  cnn eval model.onnx --data digits --json     # ONNX Runtime, preprocessing from the file's metadata\n\n"
    "  cnn eval resnet18_cifar.pt --data cifar10     # a state dict: architecture detected, preprocessing "
    "assumed (logged)\n\n"
    "  cnn eval model.pt --data cifar10 --model resnet18 --mean 0.49,0.48,0.45 --std 0.25,0.24,0.26 "
    "--classes names.txt"
)


@app.command("eval", epilog=epilog(EPILOG))
@model_options()
def eval_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="A model file: checkpoint, state dict, TorchScript, .pt2, .onnx (see cnn summary for what each shows); or a registry name with --weights FILE."
        ),
    ],
    data: Annotated[
        Optional[str], typer.Option("--data", help="Dataset (default: the one the model was trained on).")
    ] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Where datasets live.")] = None,
    split: Annotated[
        Optional[str],
        typer.Option(
            "--split",
            click_type=choice("split", SPLITS),
            help="Which split to measure (default: test; a folder of class sub-folders is measured whole; a folder without test/ gives val/).",
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            help="Batch size (default 256; 64 for image files, so that decoding the next batch overlaps the model).",
            min=1,
        ),
    ] = None,
    confusion: Annotated[
        Optional[str], typer.Option("--confusion", help="Write the confusion matrix as a PNG.")
    ] = None,
    min_accuracy: Annotated[
        Optional[float], typer.Option("--min-accuracy", help="CI gate: exit 1 when top-1 is below (0..1).")
    ] = None,
    gallery: Annotated[
        Optional[str],
        typer.Option(
            "--gallery",
            help="Write the misclassified images into this folder: misclassified.png (a labelled grid: true, "
            "predicted, confidence) and misclassified.csv (every one).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite an existing --confusion file or --gallery files.")
    ] = False,
    device: DeviceOpt = DEFAULT_DEVICE,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Top-1, top-5, loss, macro precision/recall/F1, balanced accuracy, per-class metrics and the confusion
    matrix; --min-accuracy gates CI."""
    from cnncli.errors import UsageError, WorkFailed

    if not opts.weights:  # a trained model is a file; a registry name is one only with --weights
        check_file(model, "model", kind="model")
    req = opts.check(model)
    if confusion:
        from cnncli.fileio import check_output

        check_output(confusion, [model], force, flag="--confusion")
    if gallery:
        import os

        from cnncli.engine.evaluate import GALLERY_FILES
        from cnncli.fileio import check_output, check_output_folder

        check_output_folder(gallery, "--gallery folder")
        for name in GALLERY_FILES:
            check_output(os.path.join(gallery, name), [model], force, flag="--gallery")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise UsageError(f"--min-accuracy must be between 0 and 1, got {min_accuracy}", "0.9 means 90%")
    from cnncli.engine.evaluate import evaluate_file
    from cnncli.engine.runner import is_onnx

    dev = None if is_onnx(model) else pick_device(device)
    res = evaluate_file(
        model, data, split, data_dir=data_dir, batch_size=batch_size, request=req, device=dev, log=log, gallery=gallery
    )
    if dev is not None and not json_out:
        log_device(device, dev)
    if confusion:
        from cnncli.plots import plot_confusion

        plot_confusion(res.confusion, res.classes, confusion, f"{model} on {res.data} {res.split}: {res.accuracy:.2%}")
        log(f"confusion matrix: {confusion}")
    if json_out:
        emit_json(res.as_json())
    else:
        _render(res)
    if min_accuracy is not None and res.accuracy < min_accuracy:
        raise WorkFailed(f"accuracy {res.accuracy:.4f} is below --min-accuracy {min_accuracy}")


def _render(res) -> None:
    top5 = f"  top-5 {res.top5:.2%}" if res.top5 is not None else ""
    say(
        f"{res.model} on {res.data} ({res.split}, {res.samples:,} images at {dims(res.input)}): "
        f"top-1 {res.accuracy:.2%}{top5}  loss {res.loss:.4f}  {res.images_per_second:,.0f} img/s"
    )
    say(
        f"macro precision {res.precision:.2%}  recall {res.recall:.2%}  F1 {res.f1:.2%}  "
        f"balanced accuracy {res.balanced_accuracy:.2%}"
    )
    names, per_class = res.classes, res.per_class
    pct = {n: "-" if per_class[n] is None else f"{per_class[n]:.2%}" for n in names}
    report = res.per_class_metrics
    metric_columns = [Column(c, right=True) for c in ("precision", "recall", "f1", "support")]

    def metrics(n: str) -> list[str]:
        m = report.get(n)
        if m is None:  # neither in the labels nor in the predictions
            return ["-", "-", "-", "0"]
        return [f"{m['precision']:.2%}", f"{m['recall']:.2%}", f"{m['f1']:.2%}", str(m["support"])]

    render_table([Column("class"), *metric_columns], [[n, *metrics(n)] for n in names], title="per class")
    if len(names) > 20:  # too wide for a matrix
        return
    columns = [Column("true \\ predicted"), *(Column(n, right=True) for n in names), Column("accuracy", right=True)]
    rows = [[n, *map(str, row), pct[n]] for n, row in zip(names, res.confusion)]
    render_table(columns, rows, title="confusion matrix (rows: true, columns: predicted)")
