"""`cnn eval`: measure a checkpoint or an exported ONNX model on a dataset split."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import DeviceOpt, JsonOpt, check_file, console, emit_json, log, plain_mode

EPILOG = ("Examples:\n\n  cnn eval runs/train/best.pt --data digits\n\n"
          "  cnn eval runs/train/best.pt --data cifar10 --confusion confusion.png --min-accuracy 0.9\n\n"
          "  cnn eval model.onnx --data digits --json     # ONNX Runtime, preprocessing from the file's metadata")


@app.command("eval", epilog=EPILOG)
def eval_cmd(
    model: Annotated[str, typer.Argument(help="A checkpoint .pt (from cnn train/fcn) or an exported .onnx file.")],
    data: Annotated[Optional[str], typer.Option("--data", help="Dataset (default: the one the checkpoint was trained on).")] = None,
    data_dir: Annotated[Optional[str], typer.Option("--data-dir", help="Where datasets live.")] = None,
    split: Annotated[str, typer.Option("--split", help="test | val | train.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size.")] = 256,
    confusion: Annotated[Optional[str], typer.Option("--confusion", help="Write the confusion matrix as a PNG.")] = None,
    min_accuracy: Annotated[Optional[float], typer.Option("--min-accuracy", help="CI gate: exit 1 when top-1 is below (0..1).")] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
) -> None:
    """Top-1, top-5, loss, per-class accuracy and confusion matrix; --min-accuracy gates CI."""
    from cnncli.errors import UsageError, WorkFailed

    check_file(model, "model")
    if split not in ("test", "val", "train"):
        raise UsageError(f"unknown split {split!r}", "use test, val or train")
    if min_accuracy is not None and not 0 <= min_accuracy <= 1:
        raise UsageError(f"--min-accuracy must be between 0 and 1, got {min_accuracy}", "0.9 means 90%")
    if batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    from cnncli.data import load_dataset
    from cnncli.engine.evaluate import batches_for, evaluate_model, evaluate_onnx

    if model.endswith(".onnx"):
        from cnncli.export import read_metadata

        meta = read_metadata(model)
        name = data or meta.get("dataset")
        if not name:
            raise UsageError("give --data", "the ONNX file does not say which dataset it was trained on")
        ds = load_dataset(name, data_dir)
        loader = batches_for(ds, split, input_size=tuple(meta["input_size"]), mean=meta["mean"], std=meta["std"],
                             batch_size=batch_size)
        res = evaluate_onnx(model, loader, meta.get("classes") or ds.classes)
        res["device"] = "onnxruntime-cpu"
    else:
        from cnncli.engine.checkpoint import open_model
        from cnncli.engine.device import pick_device

        loaded = open_model(model)
        name = data or loaded.checkpoint.get("dataset")
        if not name:
            raise UsageError("give --data", "the checkpoint does not say which dataset it was trained on")
        ds = load_dataset(name, data_dir)
        dev = pick_device(device, quiet=json_out)
        loader = batches_for(ds, split, input_size=loaded.input_size, mean=loaded.mean or ds.mean,
                             std=loaded.std or ds.std, batch_size=batch_size, device=dev)
        res = evaluate_model(loaded.model, loader, loaded.classes or ds.classes, dev)
        res["device"] = str(dev)
    res.update({"model": model, "data": name, "split": split})
    if confusion:
        from cnncli.engine.evaluate import plot_confusion

        plot_confusion(res, confusion, f"{model} on {name} {split}: {res['accuracy']:.2%}")
        log(f"confusion matrix: {confusion}")
    if json_out:
        emit_json(res)
    else:
        _render(res)
    if min_accuracy is not None and res["accuracy"] < min_accuracy:
        raise WorkFailed(f"accuracy {res['accuracy']:.4f} is below --min-accuracy {min_accuracy}")


def _render(res: dict) -> None:
    top5 = f"  top-5 {res['top5']:.2%}" if res["top5"] is not None else ""
    head = (f"{res['model']} on {res['data']} ({res['split']}, {res['samples']:,} images): "
            f"top-1 {res['accuracy']:.2%}{top5}  loss {res['loss']:.4f}  {res['images_per_second']:,.0f} img/s")
    names = res["classes"]
    conf = res["confusion"]
    if plain_mode() or len(names) > 20:
        lines = [head, "per-class accuracy:"]
        for n_, a in res["per_class"].items():
            lines.append(f"  {n_:<16} {'-' if a is None else f'{a:.2%}'}")
        if len(names) <= 20:
            w = max(5, max(len(n_) for n_ in names) + 1)
            lines.append("confusion matrix (rows: true, columns: predicted):")
            lines.append(" " * w + "".join(f"{n_[:w - 1]:>{w}}" for n_ in names))
            for n_, row in zip(names, conf):
                lines.append(f"{n_[:w - 1]:<{w}}" + "".join(f"{v:>{w}}" for v in row))
        print("\n".join(lines))
        return
    from rich.table import Table

    out = console()
    out.print(head)
    t = Table(title="confusion matrix (rows: true, columns: predicted)")
    t.add_column("true \\ pred")
    for n_ in names:
        t.add_column(n_, justify="right")
    t.add_column("accuracy", justify="right")
    for n_, row in zip(names, conf):
        a = res["per_class"][n_]
        t.add_row(n_, *[f"[bold]{v}[/]" if i == names.index(n_) else str(v) for i, v in enumerate(row)],
                  "-" if a is None else f"{a:.2%}")
    out.print(t)
