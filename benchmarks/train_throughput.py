"""The trainer behind `cnn train` against the hand-written reference loop (benchmarks/reference_train_loop.py).

Usage: python benchmarks/train_throughput.py [lenet|resnet18c] [STEPS] [BATCH] [RUNS]
Same model, batch, precision and memory format; synthetic 3x32x32 data (the `fake` dataset for the trainer).
Prints images/s of each (median of RUNS) and the ratio trainer/reference (target >= 0.95), then the trainer with
its default settings (channels-last, --precision auto) against the reference's plain fp32 loop.
"""

import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

MODEL = sys.argv[1] if len(sys.argv) > 1 else "lenet"
STEPS = int(sys.argv[2]) if len(sys.argv) > 2 else (300 if MODEL == "lenet" else 15)
BATCH = int(sys.argv[3]) if len(sys.argv) > 3 else (256 if MODEL == "lenet" else 128)
RUNS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
OURS = {"lenet": "lenet5", "resnet18c": "resnet18"}[MODEL]

TRAINER = r"""
import json, sys, time
from cnncli.config import TrainConfig
from cnncli.engine.trainer import train
steps, batch, cl, prec = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
stamps = []
def rep(event):  # typed events (cnncli/engine/events.py): a timestamp per training step
    if type(event).__name__ == "Step":
        stamps.append(time.perf_counter())
cfg = TrainConfig(model=sys.argv[5], data="fake", batch_size=batch, max_steps=steps + 3, epochs=100, device="cpu",
                  channels_last=cl, precision=prec, project=sys.argv[6], name="bench")
train(cfg, rep)
# the same window as the reference: after 3 warm-up steps, STEPS steps
print(json.dumps({"images_per_second": steps * batch / (stamps[steps + 2] - stamps[2])}))
"""


def reference(opts):
    out = subprocess.run(
        [sys.executable, os.path.join(HERE, "reference_train_loop.py"), MODEL, str(STEPS), str(BATCH), *opts],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(out.strip().split("images/s=")[1])


def ours(channels_last: bool, precision: str, tmp: str):
    out = subprocess.run(
        [sys.executable, "-c", TRAINER, str(STEPS), str(BATCH), "1" if channels_last else "0", precision, OURS, tmp],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "CI": "1"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["images_per_second"]


def median(fn, *a):
    return statistics.median(fn(*a) for _ in range(RUNS))


if __name__ == "__main__":
    import tempfile

    tmp = tempfile.mkdtemp()
    from cnncli.engine.device import cpu_has_bf16

    print(f"{MODEL}: batch {BATCH}, {STEPS} steps, median of {RUNS} runs; CPU bf16: {cpu_has_bf16()}")
    ref32 = median(reference, [])
    our32 = median(ours, False, "32", tmp)
    print(
        f"same settings (fp32, NCHW):     reference {ref32:9.1f} img/s   cnn train {our32:9.1f} img/s   ratio {our32 / ref32:.3f} (target >= 0.95)"
    )
    ref_cl = median(reference, ["channels_last"])
    our_cl = median(ours, True, "32", tmp)
    print(
        f"same settings (fp32, NHWC):     reference {ref_cl:9.1f} img/s   cnn train {our_cl:9.1f} img/s   ratio {our_cl / ref_cl:.3f}"
    )
    if cpu_has_bf16():
        ref_bf = median(reference, ["channels_last", "bf16"])
        our_bf = median(ours, True, "bf16", tmp)
        print(
            f"same settings (bf16, NHWC):     reference {ref_bf:9.1f} img/s   cnn train {our_bf:9.1f} img/s   ratio {our_bf / ref_bf:.3f}"
        )
    our_default = median(ours, True, "auto", tmp)
    print(
        f"cnn train defaults vs reference fp32 NCHW: {our_default:9.1f} / {ref32:9.1f} img/s = {our_default / ref32:.3f}"
    )
