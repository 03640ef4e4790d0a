"""`cnn train`: the main job."""

from __future__ import annotations

import os
import sys
from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import DeviceOpt, JsonOpt, choice, emit_json, epilog, is_terminal, log, say
from cnncli.config import (
    AUGMENTS,
    CACHE_MODES,
    CLASS_WEIGHTS,
    OPTIMIZERS,
    PRECISION_ALIASES,
    PRECISIONS,
    SAMPLERS,
    SCHEDULES,
    TrainConfig,
)
from cnncli.data import list_datasets
from cnncli.errors import shown_lines

D = TrainConfig()  # every default below is the config's own (a test checks each flag against it)

EPILOG = (
    "Examples:\n\n"
    "  cnn train linenet --data lines                 # embedded data, no network: about 10 s on 2 cores\n\n"
    "  cnn train lenet --data digits --epochs 40\n\n"
    "  cnn train resnet --data cifar10 --epochs 30     # downloads CIFAR-10 into --data-dir on first use\n\n"
    "  cnn train resnet18 --data folder:~/pets --img-size 128\n\n"
    "  cnn train resnet18 --data folder:~/pets --pretrained --freeze backbone   # fine-tune published weights\n\n"
    "  cnn train resnet18 --data folder:~/pets --augment trivial --mixup 0.2 --ema\n\n"
    "  cnn train --config runs/train/args.json --name again   # repeat a run (its args.json is a config)\n\n"
    "  cnn train --resume runs/train                   # continue an interrupted run\n\n"
    "  torchrun --nproc-per-node 4 -m cnncli train resnet --data cifar10   # DDP (see docs/distributed.md)\n\n"
    "Datasets (--data):\n\n" + "\n\n".join(f"  {d.usage:<14} {d.description}" for d in list_datasets())
)
DATA_HELP = "Dataset: " + ", ".join(d.usage for d in list_datasets()) + " (list below)."


@app.command("train", epilog=epilog(EPILOG))
def train_cmd(
    model: Annotated[
        Optional[str], typer.Argument(help="Model: registry name, family (resnet), file.py:Class.")
    ] = D.model,
    data: Annotated[Optional[str], typer.Option("--data", help=DATA_HELP)] = D.data,
    data_dir: Annotated[
        Optional[str],
        typer.Option("--data-dir", help="Where datasets live (default $CNN_DATA_DIR or ~/.cache/cnncli/data)."),
    ] = D.data_dir,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs (default: per dataset).")] = D.epochs,
    batch_size: Annotated[
        Optional[int], typer.Option("--batch-size", help="Global batch size (default: per dataset).")
    ] = D.batch_size,
    lr: Annotated[
        Optional[float],
        typer.Option(
            "--lr",
            help="Peak learning rate (default SGD 0.1 at batches of 64-256, x batch/256 above, x sqrt(batch/64) below; AdamW 2e-3).",
        ),
    ] = D.lr,
    optimizer: Annotated[
        str,
        typer.Option(
            "--optimizer", click_type=choice("optimizer", OPTIMIZERS), help="SGD with Nesterov momentum, or AdamW."
        ),
    ] = D.optimizer,
    schedule: Annotated[
        str, typer.Option("--schedule", click_type=choice("schedule", SCHEDULES), help="Learning-rate schedule.")
    ] = D.schedule,
    weight_decay: Annotated[
        Optional[float], typer.Option("--weight-decay", help="Default 5e-4 (SGD), 0.05 (AdamW).")
    ] = D.weight_decay,
    label_smoothing: Annotated[
        float, typer.Option("--label-smoothing", help="Cross-entropy label smoothing.")
    ] = D.label_smoothing,
    precision: Annotated[
        str,
        typer.Option(
            "--precision",
            click_type=choice("precision", PRECISIONS, PRECISION_ALIASES),
            help="auto: bf16 where supported, fp16 on older GPUs, else 32.",
        ),
    ] = D.precision,
    channels_last: Annotated[
        bool, typer.Option("--channels-last/--no-channels-last", help="NHWC memory format for conv nets.")
    ] = D.channels_last,
    compile_: Annotated[bool, typer.Option("--compile", help="torch.compile the model.")] = D.compile,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = D.seed,
    deterministic: Annotated[
        bool, typer.Option("--deterministic", help="Deterministic algorithms (repeatable on CPU).")
    ] = D.deterministic,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            help="DataLoader workers for folder datasets (default: this machine's CPUs per process, at most 8).",
        ),
    ] = None,
    patience: Annotated[
        Optional[int], typer.Option("--patience", help="Stop after N epochs without a better val accuracy.")
    ] = D.patience,
    max_steps: Annotated[
        Optional[int], typer.Option("--max-steps", help="Stop after N optimizer steps.")
    ] = D.max_steps,
    project: Annotated[str, typer.Option("--project", help="Folder of runs.")] = D.project,
    name: Annotated[str, typer.Option("--name", help="Run name; an existing one gets a numbered sibling.")] = D.name,
    resume: Annotated[
        Optional[str], typer.Option("--resume", help="Continue a run: its folder or its last.pt.")
    ] = None,
    img_size: Annotated[
        Optional[str], typer.Option("--img-size", help="Folder datasets: resize images to HxW or N.")
    ] = None,
    cache: Annotated[
        str,
        typer.Option(
            "--cache",
            click_type=choice("cache", CACHE_MODES),
            help="Folder datasets: decode each image once, before the first epoch, into RAM or into files under "
            "--data-dir (auto: RAM when the decoded images fit in a quarter of the free memory; none: decode "
            "every epoch).",
        ),
    ] = D.cache,
    num_classes: Annotated[
        Optional[int], typer.Option("--num-classes", help="Override the number of classes.")
    ] = D.num_classes,
    weights: Annotated[
        Optional[str],
        typer.Option(
            "--weights",
            help="Start from a model file's weights (state dict, checkpoint, TorchScript...) or a published weights name "
            "(IMAGENET1K_V1, DEFAULT, a timm tag like a1_in1k): fitting tensors load, a head for other classes is re-made.",
        ),
    ] = D.weights,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-code",
            "--trust-pickle",
            help="--weights may be a file that carries code: TorchScript, a .pt2 program, a whole pickled model (trusted files only; docs/security.md).",
        ),
    ] = D.trust_pickle,
    threads: Annotated[
        Optional[int],
        typer.Option(
            "--threads",
            help="CPU threads for the model (default: CNN_THREADS, else the cores this process may use less the data workers).",
        ),
    ] = D.threads,
    pretrained: Annotated[
        bool,
        typer.Option(
            "--pretrained",
            help="Start from the architecture's published weights (torchvision's DEFAULT, timm's pretrained tag), "
            "downloaded once into the torch.hub cache ($TORCH_HOME; timm's: the Hugging Face cache) with their hash "
            "checked; their mean/std and input size are used. CNN_WEIGHTS_MIRROR=URL replaces the download host.",
        ),
    ] = D.pretrained,
    freeze: Annotated[
        Optional[str],
        typer.Option(
            "--freeze",
            help="backbone: train only the (re-made) head; N: the first N top-level layers stay as loaded "
            "(their BatchNorm statistics too).",
        ),
    ] = D.freeze,
    augment: Annotated[
        str,
        typer.Option(
            "--augment",
            click_type=choice("augment", AUGMENTS),
            help="basic: random crop + flip; trivial/randaugment/autoaugment/augmix: that torchvision policy per "
            "image on top; none: no augmentation.",
        ),
    ] = D.augment,
    mixup: Annotated[float, typer.Option("--mixup", help="MixUp alpha (0.2 is usual; 0: off).")] = D.mixup,
    cutmix: Annotated[float, typer.Option("--cutmix", help="CutMix alpha (1.0 is usual; 0: off).")] = D.cutmix,
    ema: Annotated[
        bool,
        typer.Option("--ema/--no-ema", help="Evaluate and save a moving average of the weights (best.pt holds it)."),
    ] = D.ema,
    ema_decay: Annotated[float, typer.Option("--ema-decay", help="The moving average's decay.")] = D.ema_decay,
    class_weights: Annotated[
        str,
        typer.Option(
            "--class-weights",
            click_type=choice("class weights", CLASS_WEIGHTS),
            help="balanced: weight the loss by inverse class frequency (for imbalanced folders).",
        ),
    ] = D.class_weights,
    sampler: Annotated[
        str,
        typer.Option(
            "--sampler",
            click_type=choice("sampler", SAMPLERS),
            help="balanced: draw every class equally often (with replacement).",
        ),
    ] = D.sampler,
    accumulate: Annotated[
        int, typer.Option("--accumulate", help="Split each batch into N micro-batches (less memory, the same step).")
    ] = D.accumulate,
    clip_grad: Annotated[
        Optional[float], typer.Option("--clip-grad", help="Clip the gradients' global norm (1.0 is usual).")
    ] = D.clip_grad,
    warmup_epochs: Annotated[
        Optional[float],
        typer.Option("--warmup-epochs", help="Linear warm-up over E epochs, then the schedule's decay."),
    ] = D.warmup_epochs,
    logger: Annotated[
        str,
        typer.Option(
            "--logger",
            help="csv (metrics.csv, always), tensorboard (event files in the run folder), mlflow "
            "($MLFLOW_TRACKING_URI, default ./mlruns); several: comma-separated.",
        ),
    ] = D.logger,
    config: Annotated[
        Optional[str],
        typer.Option(
            "--config",
            help="Options from a JSON, TOML or YAML file (keys as in args.json); the command line wins. A run's "
            "args.json repeats the run.",
        ),
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the configuration these options make and exit (nothing runs).")
    ] = False,
    nproc_per_node: Annotated[
        Optional[int], typer.Option("--nproc-per-node", help="Launch N DDP processes with torchrun.")
    ] = None,
    device: DeviceOpt = D.device,
    json_out: JsonOpt = False,
    ctx: typer.Context = None,
) -> None:
    """Train a model on a dataset; writes PROJECT/NAME with checkpoints, metrics and curves."""
    if nproc_per_node is not None:
        _launch_torchrun(nproc_per_node)
        return
    given = dict(locals())
    cfg = _config(given)
    cfg = _with_config_file(cfg, config, ctx)
    if print_config:
        _print_config(cfg, config)
        return
    from cnncli.engine.runs import RunComplete

    try:
        result = _run(cfg, resume)
    except RunComplete as done:  # --resume of a finished run: said, nothing trained or rewritten
        if int(os.environ.get("RANK", "0")) == 0:
            log(done.message)
            if json_out:
                emit_json(done.summary())
        return
    if result is None:  # not rank 0 of a torchrun job: rank 0 reports
        return
    _report(result, cfg, resume, json_out)


def _report(result, cfg, resume, json_out) -> None:
    """The result (JSON, or the done line) and the commands to run next."""
    if json_out:
        emit_json(result.as_json())
    else:
        test = (
            f", test {result.test_accuracy:.2%}"
            if result.test_accuracy is not None
            else " (no test split: the folder has no test/, and val chose best.pt)"
        )
        say(
            f"done: {result.epochs} epochs, best val accuracy {result.best_accuracy:.2%}{test}, "
            f"{result.images_per_second:,.0f} images/s on {result.device} ({_prec(result.precision)})"
        )
        say(f"run folder: {result.run_dir}")
    d = result.run_dir
    log("next:")
    split = " --split val" if result.test_accuracy is None else ""  # no test split: the held-out part, not every image
    log(f"  cnn eval {d}/best.pt --data {cfg.data if not resume else _data_of(d)}{split}")
    log(f"  cnn export {d}/best.pt --onnx")
    log(f"  cnn fcn {d}/best.pt")


def _config(given: dict) -> TrainConfig:
    """The TrainConfig the options describe: every config field has the option of its name (`compile` is
    `compile_`, a keyword in the CLI's signature); --img-size is parsed to [H, W]."""
    from dataclasses import fields

    values = {f.name: given[f.name + "_" if f.name == "compile" else f.name] for f in fields(TrainConfig)}
    if values["img_size"]:
        from cnncli.analysis.arith import parse_size

        _, h, w = parse_size(values["img_size"])
        values["img_size"] = [h, w]
    return TrainConfig(**values)


def _with_config_file(cfg, path, ctx):
    """--config FILE's options under the ones typed on the command line."""
    if not path:
        return cfg
    from cnncli.engine.configfile import merge_config

    return merge_config(path, cfg, _from_command_line(ctx))


def _print_config(cfg, path) -> None:
    """--print-config: the configuration, checked, in the --config file's format (JSON without one)."""
    from cnncli.config import validate
    from cnncli.engine.configfile import config_text

    sys.stdout.write(config_text(validate(cfg), path))


def _from_command_line(ctx) -> set[str]:
    """The config fields whose options were typed on the command line (they win over --config)."""
    from click.core import ParameterSource

    out = set()
    for name in ctx.params:
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            out.add("compile" if name == "compile_" else name)
    return out


def _run(cfg, resume):
    """Train with progress on stderr (rank 0 only); Ctrl-C/SIGTERM exits 130 saying how to resume."""
    from cnncli.engine.trainer import Interrupted, train

    is_main = int(os.environ.get("RANK", "0")) == 0
    reporter = _Reporter(enabled=is_main)
    try:
        result = train(cfg, reporter, resume=resume)
    except Interrupted as e:
        reporter.close()  # stop the live bar before the message
        log(f"interrupted: last.pt written; resume with: cnn train --resume {e.run_dir}")
        raise typer.Exit(130) from None
    finally:
        reporter.close()
    return result if is_main else None


def _prec(p: str) -> str:
    return {"32": "fp32", "bf16": "bf16 autocast", "16": "fp16 autocast"}.get(p, p)


def _data_of(run_dir: str) -> str:
    import json

    try:
        with open(os.path.join(run_dir, "args.json")) as f:
            return json.load(f)["data"]
    except (OSError, KeyError, ValueError):
        return "DATASET"


def _launch_torchrun(n: int) -> None:
    """`cnn train --nproc-per-node N ...` = `torchrun --nproc-per-node N -m cnncli train ...`."""
    import subprocess

    from cnncli.errors import UsageError

    if n < 1:
        raise UsageError("--nproc-per-node must be at least 1")
    argv = list(sys.argv[1:])
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc-per-node":
            skip = True
            continue
        if a.startswith("--nproc-per-node="):
            continue
        out.append(a)
    if out and out[0] == "train":
        out = out[1:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "-m",
        "cnncli",
        "train",
        *out,
    ]
    log("launching: " + " ".join(cmd[2:]))
    rc = subprocess.call(cmd)
    if rc:
        raise typer.Exit(rc)


class _Reporter:
    """Progress: a rich bar on a TTY, plain per-epoch lines otherwise (CI, NO_COLOR, pipes)."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.plain = not is_terminal(sys.stderr)
        self.progress = None
        self.task = None
        self.task_desc = ""

    def __call__(self, event) -> None:
        """One typed event from the trainer (cnncli/engine/events.py) to its hook below."""
        from cnncli.engine.events import dispatch

        if self.enabled:
            dispatch(self, event)

    def on_note(self, e) -> None:
        log(e.message)

    def on_start(self, e) -> None:
        resumed = f", resumed at epoch {e.resumed_at[0] + 1} step {e.resumed_at[1]}" if e.resumed_at else ""
        log(
            f"train {e.model} on {e.data}: {e.train_samples:,} images {'x'.join(map(str, e.input))}, "
            f"{e.epochs} epochs x {e.steps_per_epoch} steps, batch {e.batch_size}, {e.optimizer} lr {e.lr:.3g}, "
            f"device {e.device}"
            f"{' (' + e.threads + ')' if e.threads else ''}, {_prec(e.precision)}{resumed}"
        )
        log(f"run folder: {e.run_dir}")
        if not self.plain:
            self._start_bar()

    def _start_bar(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from cnncli.cli._common import console

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
        )
        self.progress = Progress(*columns, console=console(stderr=True), transient=False)
        self.progress.start()

    def on_step(self, e) -> None:
        if self.progress is None:
            return
        desc = f"epoch {e.epoch + 1}"
        if self.task is None or self.task_desc != desc:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(desc, total=e.steps, completed=e.step - 1, stats="")
            self.task_desc = desc
        # read from the device every few steps, not every step
        running = f"loss {e.loss:.4f} acc {e.accuracy:.2%} " if e.loss is not None else ""
        self.progress.update(self.task, completed=e.step, stats=f"{running}{e.images_per_second:,.0f} img/s")

    def on_epoch(self, e) -> None:
        star = " *" if e.best else ""
        line = (
            f"epoch {e.epoch}/{e.epochs}  loss {e.train_loss:.4f}  acc {e.train_accuracy:.2%}"
            f"  val_loss {e.val_loss:.4f}  val_acc {e.val_accuracy:.2%}{star}  lr {e.lr:.3g}"
            f"  {e.images_per_second:,.0f} img/s  {e.seconds:.1f}s"
        )
        if self.progress is None:
            log(line)
            return
        if self.task is not None:  # the finished epoch's bar gives way to its summary line
            self.progress.remove_task(self.task)
            self.task = None
        self.progress.console.print(shown_lines(line), markup=False, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
