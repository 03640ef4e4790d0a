"""`cnn models`: what models can I use?"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cnncli.cli import app
from cnncli.cli._common import JsonOpt, console, emit_json, human, plain_mode


@app.command("models", epilog="Examples:\n\n  cnn models\n\n  cnn models 'res*'\n\n  cnn models 'efficientnet*' "
             "--source torchvision\n\n  cnn models --source all --json")
def models_cmd(
    pattern: Annotated[Optional[str], typer.Argument(help="Wildcard filter on names, e.g. 'res*' or '*bn'.")] = None,
    source: Annotated[str, typer.Option("--source", help="builtin | torchvision | timm | all.")] = "builtin",
    params: Annotated[bool, typer.Option("--params/--no-params", help="Count parameters (built on the meta device, no memory).")] = True,
    json_out: JsonOpt = False,
) -> None:
    """List models with family, source, default input size and parameter count."""
    from cnncli.models import count_params, list_models
    from cnncli.models._registry import family_defaults

    infos = list_models(pattern or "*", source)
    defaults = {v: k for k, v in family_defaults().items()}
    rows = []
    for m in infos:
        rows.append({
            "name": m.qualified if m.source != "builtin" else m.name,
            "family": m.family,
            "source": m.source,
            "input_size": list(m.input_size),
            "num_classes": m.num_classes,
            "params": count_params(m) if params else None,
            "family_default": defaults.get(m.name) == m.family and m.source == "builtin",
            "description": m.description,
        })
    if json_out:
        emit_json(rows)
        return
    if not rows:
        print(f"no models match {pattern!r} in source {source!r} (try --source all)")
        return
    if plain_mode():
        print(f"{'name':<22} {'family':<14} {'source':<12} {'input':>10} {'params':>12}  description")
        for r in rows:
            name = r["name"] + (" *" if r["family_default"] else "")
            print(f"{name:<22} {r['family']:<14} {r['source']:<12} {'x'.join(map(str, r['input_size'])):>10} "
                  f"{human(r['params']):>12}  {r['description']}")
    else:
        from rich.table import Table

        t = Table(caption="* = the family's default (e.g. `resnet` means resnet18)")
        for col in ("name", "family", "source", "input", "params", "description"):
            t.add_column(col, justify="right" if col in ("input", "params") else "left")
        for r in rows:
            t.add_row(r["name"] + (" *" if r["family_default"] else ""), r["family"], r["source"],
                      "x".join(map(str, r["input_size"])), human(r["params"]), r["description"])
        console().print(t)
