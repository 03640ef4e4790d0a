"""`cnn fcn`: a classifier rewritten as a fully-convolutional network (a sliding classifier)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import JsonOpt, emit_json, epilog, log, log_notes, model_options, say

EPILOG = (
    "Examples:\n\n  cnn fcn runs/train/best.pt                  # writes runs/train/best-fcn.pt\n\n"
    "  cnn fcn runs/train/best.pt -o lenet-fcn.pt --json\n\n"
    "Then: cnn scoremap best-fcn.pt big.png, cnn export best-fcn.pt --onnx (dynamic H/W), cnn summary best-fcn.pt."
)


@app.command("fcn", epilog=epilog(EPILOG))
@model_options()
def fcn_cmd(
    checkpoint: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A trained classifier: a checkpoint from cnn train, "
            "a state dict (architecture detected, or --model NAME), or a "
            "registry name with --weights.",
        ),
    ],
    output: Annotated[
        Optional[str], typer.Option("-o", "--output", help="Where to write (default: MODEL-fcn.pt).")
    ] = None,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance", help="Largest allowed logit difference at the training size (relative to the logit scale)."
        ),
    ] = 1e-4,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")] = False,
    json_out: JsonOpt = False,
    opts=None,
) -> None:
    """Rewrite the classifier head as convolutions, verify identical logits, record stride and receptive field."""
    from cnncli.errors import UsageError
    from cnncli.fileio import check_output
    from cnncli.models.open import default_output

    req = opts.check(checkpoint)
    out = check_output(output or default_output(checkpoint, "-fcn.pt"), [checkpoint], force)
    from cnncli.analysis.fcn import fcn_checkpoint, to_fully_convolutional
    from cnncli.models.open import open_model

    opened = open_model(checkpoint, req)
    opened.require_rebuildable("fcn")
    if opened.fully_convolutional:
        raise UsageError(f"{checkpoint} is already fully convolutional")
    size = opened.input_size
    conv = to_fully_convolutional(opened.model, size, verify=True, tolerance=tolerance)
    log_notes(opened)
    fcn_checkpoint(opened.to_checkpoint(), conv).save(out)
    result = {"path": out, "source": checkpoint, **conv.as_dict()}
    if json_out:
        emit_json(result)
        return
    for step in conv.steps:
        log(f"  {step}")
    s, rf, off = conv.stride, conv.receptive_field, conv.offset
    say(
        f"wrote {out}: fully convolutional, logits equal at {'x'.join(map(str, size))} "
        f"(max |diff| {conv.max_abs_diff:.2e})"
    )
    th, tw = size[1:]
    cells = f"an HxW image gives a score map of floor((H-{th})/{s[0]})+1 x floor((W-{tw})/{s[1]})+1 cells"
    if isinstance(rf, str):
        say(f"output stride {s[0]}x{s[1]}, receptive field {rf}: {cells}")
        log(
            "note: every score reads the whole image (squeeze-and-excitation, attention or another operation "
            "that pools every position), so a cell is not a classifier of its own window; scores still vary "
            "with position"
        )
    else:
        say(f"output stride {s[0]}x{s[1]}, receptive field {rf[0]}x{rf[1]}, offset {off[0]},{off[1]}: {cells}")
    log(f"next: cnn scoremap {out} IMAGE.png")
