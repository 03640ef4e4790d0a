"""Locate ../shared/reference (the baselines the benchmarks compare against)."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def reference_dir() -> str:
    for cand in (os.environ.get("CNN_REFERENCE_DIR"), os.path.join(HERE, "..", "..", "shared", "reference"),
                 os.path.join(HERE, "..", "shared", "reference")):
        if cand and os.path.exists(os.path.join(cand, "train_loop.py")):
            return os.path.abspath(cand)
    raise SystemExit("reference scripts not found: set CNN_REFERENCE_DIR to the folder with train_loop.py")
