"""`cnn models`: what models can I use?"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import Column, JsonOpt, choice, emit_json, epilog, human, render_table, say

SOURCES = ("builtin", "torchvision", "timm", "all")


@app.command(
    "models",
    epilog=epilog(
        "Examples:\n\n  cnn models\n\n  cnn models 'res*'\n\n  cnn models 'efficientnet*' "
        "--source torchvision\n\n  cnn models --source all --json"
    ),
)
def models_cmd(
    pattern: Annotated[Optional[str], typer.Argument(help="Wildcard filter on names, e.g. 'res*' or '*bn'.")] = None,
    source: Annotated[
        str, typer.Option("--source", click_type=choice("source", SOURCES), help="Which registry to list.")
    ] = "builtin",
    params: Annotated[
        bool, typer.Option("--params/--no-params", help="Count parameters (built on the meta device, no memory).")
    ] = True,
    json_out: JsonOpt = False,
) -> None:
    """List models with family, source, default input size and parameter count."""
    from cnncli.models import count_params, list_models
    from cnncli.models._registry import family_defaults

    defaults = {v: k for k, v in family_defaults().items()}
    rows = [
        {
            "name": m.qualified if m.source != "builtin" else m.name,
            "family": m.family,
            "source": m.source,
            "input_size": list(m.input_size),
            "num_classes": m.num_classes,
            "params": count_params(m) if params else None,
            "family_default": defaults.get(m.name) == m.family and m.source == "builtin",
            "description": m.description,
        }
        for m in list_models(pattern or "*", source)
    ]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        say(f"no models match {pattern!r} in source {source!r} (try --source all)")
        return
    _print_models(rows)


def _print_models(rows: list[dict]) -> None:
    columns = [
        Column("name"),
        Column("family"),
        Column("source"),
        Column("input", right=True),
        Column("params", right=True),
        Column("description"),
    ]
    render_table(
        columns,
        [
            [
                r["name"] + (" *" if r["family_default"] else ""),
                r["family"],
                r["source"],
                "x".join(map(str, r["input_size"])),
                human(r["params"]),
                r["description"],
            ]
            for r in rows
        ],
        notes=["* = the family's default (e.g. `resnet` means resnet18)"],
    )
