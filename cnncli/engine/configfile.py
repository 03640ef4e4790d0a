"""`cnn train --config FILE` and `--print-config`: a run's options from a JSON, TOML or YAML file, checked key by
key against TrainConfig (an unknown key or a value of the wrong type is exit 2 naming it), the command line
winning. A run's own args.json is such a file. Standard library only, except PyYAML, imported only for a YAML
file."""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields, replace

from cnncli.config import TrainConfig
from cnncli.errors import UsageError, shown

FORMATS = {".json": "json", ".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
NOT_OPTIONS = {"resume", "config", "print_config", "json", "nproc_per_node"}  # command-line only


def file_format(path: str) -> str:
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise UsageError(f"--config {shown(path)}: unknown format", "give a .json, .toml, .yaml or .yml file")
    return fmt


def read_config(path: str) -> dict:
    """The file's options as TrainConfig fields (dashes read as underscores), every key and value checked."""
    from cnncli.fileio import check_input

    fmt = file_format(path)
    check_input(path, "--config file", kind="text")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        from cnncli.fileio import os_error

        raise os_error(e, path, reading=True) from None
    try:
        text = raw.decode("utf-8")
        if fmt == "json":
            data = json.loads(text)
        elif fmt == "toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            try:
                import yaml
            except ImportError:
                raise UsageError(
                    "--config: reading YAML needs PyYAML", 'pip install "cnncli[yaml]", or give a .json or .toml file'
                ) from None
            data = yaml.safe_load(text)
    except UsageError:
        raise
    except Exception as e:  # the parsers' own errors say where (line, column)
        detail = " ".join(str(e).split())[:200]
        raise UsageError(f"--config {shown(path)} is not valid {fmt.upper()}: {detail}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UsageError(f"--config {shown(path)} must hold a table of options, not a {type(data).__name__}")
    return check_values(data, path)


def check_values(data: dict, path: str) -> dict:
    types = {f.name: str(f.type) for f in fields(TrainConfig)}
    out = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in NOT_OPTIONS:
            raise UsageError(f"--config {shown(path)}: {key!r} is a command-line option, not a run's", "remove it")
        if name not in types:
            from difflib import get_close_matches

            near = get_close_matches(name, list(types), n=1)
            raise UsageError(
                f"--config {shown(path)}: unknown key {key!r}",
                f"did you mean {near[0]!r}?" if near else "the keys are cnn train's options, as in args.json",
            )
        out[name] = _value(name, value, types[name], path)
    return out


def _value(name: str, value, kind: str, path: str):
    """`value` as the field's type (int | None, float, bool, str, list[int] | None), or a UsageError naming it."""
    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise UsageError(f"--config {shown(path)}: {name!r} cannot be null")

    def bad(what: str):
        return UsageError(f"--config {shown(path)}: {name!r} must be {what}, got {value!r}"[:300])

    base = kind.replace("| None", "").strip()
    if base == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise bad("a number")
        return float(value)
    if base.startswith("list"):  # img_size: [H, W] as args.json writes it, or "HxW" as the option takes it
        if isinstance(value, str):
            from cnncli.analysis.arith import parse_size

            _, h, w = parse_size(value)
            return [h, w]
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise bad("[H, W] or HxW")
        return value
    if base == "str":
        if name == "freeze" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if name == "precision" and isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # `precision = 32`
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def merge_config(path: str, cli: TrainConfig, typed: set[str]) -> TrainConfig:
    """The file's options under the command line's: a field typed on the command line keeps its value."""
    values = {k: v for k, v in read_config(path).items() if k not in typed}
    return replace(cli, **values)


def config_text(cfg: TrainConfig, path: str | None) -> str:
    """The configuration in the --config file's format (JSON without one); read back, it makes the same run."""
    d = cfg.to_dict()
    fmt = file_format(path) if path else "json"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(d, sort_keys=False)
    if fmt == "toml":  # TOML has no null: a missing key is the default (None)
        lines = []
        for k, v in d.items():
            if v is not None:
                lines.append(f"{k} = {json.dumps(v)}")
        return "\n".join(lines) + "\n"
    return json.dumps(d, indent=2) + "\n"
