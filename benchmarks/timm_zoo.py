"""#29's thirty timm architectures, checked as a user sees them: `cnn summary timm:NAME --json` against figures the
tool did not compute.

Usage: python benchmarks/timm_zoo.py [NAMES]   (default: the 30 of issue #29; needs timm, in the [dev] extra)

For each model, at timm's own input size:
  rows      no row with negative MACs, and the rows' own MACs add up to the total (depth 3);
  params    the total equals sum(p.numel()) of timm.create_model(NAME);
  norm      the mean/std every command uses (cnncli.models.open, as eval/predict/export read it) equal those of
            timm.data.resolve_data_config for the model, timm's own preprocessing;
  fields    every top-level stage whose field is computed, against the extent of the input gradient of its centre
            unit on random float64 weights (tests/test_receptive_zoo.py's check, within its multiply-add budget;
            CNN_RF_FULL=1 measures every stage); a model that cannot be traced is measured by cnn itself, said so;
  tokens    a global row of tokens shows the stride of its grid, or nothing (never a guess).
Prints one line per model and the failures at the end; exit 1 when any check fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback

NAMES = [
    "resnet50d", "resnet26t", "seresnext26d_32x4d", "tf_efficientnet_b0", "efficientnet_b0", "mobilenetv3_small_100",
    "mobilenetv4_conv_small", "regnety_002", "rexnet_100", "dla34", "cspresnet50", "dpn68", "res2net50_14w_8s",
    "hrnet_w18_small", "convnext_atto", "convnextv2_atto", "eca_nfnet_l0", "ghostnet_100", "repvgg_a0",
    "inception_v3", "xception41", "densenet121", "efficientvit_m0", "fastvit_t8", "vit_tiny_patch16_224",
    "deit_tiny_patch16_224", "resmlp_12_224", "mixer_s16_224", "levit_128s", "coat_lite_tiny",
]  # fmt: skip
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def summary(name: str) -> dict:
    p = subprocess.run(
        [sys.executable, "-m", "cnncli", "summary", f"timm:{name}", "--depth", "3", "--json"],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        raise RuntimeError(f"cnn summary exit {p.returncode}: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads(p.stdout)


def check(name: str) -> tuple[list[str], list[str]]:
    """(what was checked, what failed)."""
    import timm
    import torch

    from cnncli.models.open import ModelRequest, open_model, resolve_preprocess

    done, bad = [], []
    s = summary(name)
    rows = s["layers"]
    negative = [r["name"] for r in rows if r["macs"] < 0 or r["macs_total"] < 0]
    if negative:
        bad.append(f"negative MACs in {negative[:3]}")
    if sum(r["macs"] for r in rows) != s["macs"]:
        bad.append(f"rows add to {sum(r['macs'] for r in rows)}, total {s['macs']}")
    done.append(f"{len(rows)} rows, {s['macs'] / 1e9:.3f} GMACs")
    model = timm.create_model(name, pretrained=False)
    params = sum(p.numel() for p in model.parameters())
    if params != s["params"]:
        bad.append(f"params {s['params']} != {params}")
    timm_cfg = timm.data.resolve_data_config({}, model=model)
    pre, _ = resolve_preprocess(open_model(f"timm:{name}").spec, ModelRequest(), {})  # eval/predict/export's rule
    if [round(v, 6) for v in pre.mean] != [round(v, 6) for v in timm_cfg["mean"]] or [round(v, 6) for v in pre.std] != [
        round(v, 6) for v in timm_cfg["std"]
    ]:
        bad.append(f"mean/std {pre.mean}/{pre.std} != timm's {timm_cfg['mean']}/{timm_cfg['std']}")
    if list(pre.input_size) != list(timm_cfg["input_size"]):
        bad.append(f"input size {pre.input_size} != timm's {timm_cfg['input_size']}")
    done.append(f"mean {tuple(round(v, 3) for v in pre.mean)}")
    tokens = [r for r in rows if r["receptive_field"] == "global" and len(r["output"]) == 2 and r["jump"]]
    if tokens:
        done.append(f"token jump {tokens[0]['jump']}")
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import test_receptive_zoo as zoo

    from cnncli.analysis import receptive as R

    size = timm_cfg["input_size"][1]
    built = zoo._build(f"timm:{name}", size)
    in_ch = timm_cfg["input_size"][0]
    if R.model_fields(built, (in_ch, size, size), device="meta") is None:
        kinds = {r["receptive_field_kind"] for r in rows}
        done.append(f"not traceable: fields measured by cnn ({', '.join(sorted(k for k in kinds if k))})")
    else:
        checked = zoo.check_zoo_model(f"timm:{name}", size)
        done.append(f"fields: {len(checked)} stage-axes measured and equal")
    del torch
    return done, bad


def main() -> None:
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else NAMES
    failures = {}
    for name in names:
        t = time.perf_counter()
        try:
            done, bad = check(name)
        except AssertionError as e:
            done, bad = [], [f"field check: {str(e)[:300]}"]
        except Exception as e:
            done, bad = [], [f"{type(e).__name__}: {str(e)[:300]}"]
            if os.environ.get("CNN_DEBUG"):
                traceback.print_exc()
        if bad:
            failures[name] = bad
        mark = "FAIL" if bad else "ok  "
        print(f"{mark} {name:<24} {'; '.join(done + bad)}  ({time.perf_counter() - t:.0f}s)", flush=True)
    print(f"\n{len(names) - len(failures)}/{len(names)} models pass; load {os.getloadavg()[0]:.1f}")
    for name, bad in failures.items():
        print(f"  {name}: {'; '.join(bad)}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
