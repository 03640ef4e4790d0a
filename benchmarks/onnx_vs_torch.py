"""ONNX Runtime inference against PyTorch eager on CPU: ResNet-18 (3x224x224) at batch 1 and 32.

Usage: python benchmarks/onnx_vs_torch.py [RUNS]
Exports resnet18 with `cnn export` (BatchNorm folded, parity checked), then times both on the same inputs.
Prints images/s of each and the ratio ONNX Runtime / PyTorch.
"""

import os
import statistics
import sys
import tempfile
import time

import numpy as np
import onnxruntime as ort
import torch

from cnncli.checkpoint import Checkpoint, ModelSpec
from cnncli.export import export_onnx
from cnncli.models import get_model, model_from_checkpoint
from cnncli.preprocess import Preprocess

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def timed(fn, n):
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


if __name__ == "__main__":
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    m = get_model("resnet18")
    ck = os.path.join(tmp, "r18.pt")
    pre = Preprocess((3, 224, 224), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    Checkpoint(ModelSpec("resnet18", 1000, 3, (224, 224)), m.state_dict(), pre).save(ck)
    res = export_onnx(ck)
    print(f"exported with {res.exporter}, max |diff| {res.max_abs_diff:.2e}")
    model = model_from_checkpoint(Checkpoint.load(ck)).eval()
    sess = ort.InferenceSession(res.path, providers=["CPUExecutionProvider"])
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224)
        xn = x.numpy()
        with torch.inference_mode():
            t_torch = timed(lambda x=x: model(x), RUNS if batch > 1 else RUNS * 4)
        t_ort = timed(lambda xn=xn: sess.run(None, {"input": xn}), RUNS if batch > 1 else RUNS * 4)
        a, b = batch / t_torch, batch / t_ort
        print(
            f"batch {batch:>2}: PyTorch eager {a:8.1f} img/s   ONNX Runtime {b:8.1f} img/s   ratio ORT/PyTorch {b / a:.2f}"
        )
    _ = np
