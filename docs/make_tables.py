"""Regenerate the tables in docs/ that come from registries (python docs/make_tables.py; a test checks them)."""

import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- generated: {name} -->", "<!-- end generated: {name} -->"


def tables() -> dict[str, tuple[str, str]]:
    """{doc file: (block name, Markdown)}."""
    import cnncli.data  # noqa: F401  (registers the datasets)
    from cnncli.data import _registry

    return {"datasets.md": ("datasets", _registry.markdown_table())}


def replace_block(text: str, name: str, body: str) -> str:
    start, end = START.format(name=name), END.format(name=name)
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"no {start} ... {end} block")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


if __name__ == "__main__":
    for doc, (name, body) in tables().items():
        path = os.path.join(HERE, doc)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(replace_block(text, name, body))
        print(f"updated {path}")
