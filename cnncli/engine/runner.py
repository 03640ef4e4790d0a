"""The one front door for running a model on image batches, whatever runs it (Ultralytics' `nn/backends/`: one
class per runtime). `open_runner(MODEL, request, device)` tells the file's kind by its content
(`fileio.is_onnx_file`), opens it once with its preprocessing, and returns a `Runner`:

- `TorchRunner`: any model `models.open_model` opens (checkpoints, state dicts, TorchScript and programs with
  --trust-code, registry names), in eval mode on a device, with the numerics `cnn eval` and `cnn train` share.
- `OnnxRunner`: an ONNX file in an ONNX Runtime session on the CPU (a static-batch file is fed in slices).

Every runner gives `forward(x)` (the model's output for a normalised batch, as it comes), `logits(x)` (float class
scores, a fully-convolutional model's map averaged to one cell; left on the device, no synchronisation) and
`scores(x)` (logits checked for NaN and infinities, on the host). A new runtime (int8 ONNX, another execution
provider, OpenVINO) is one more subclass here, and every command that runs models can use it.
"""

from __future__ import annotations

import os

import torch

from cnncli.errors import UsageError
from cnncli.preprocess import Preprocess


class Runner:
    """A model ready to score normalised image batches, with what is known about its inputs."""

    kind = ""

    def __init__(self, path: str, preprocess: Preprocess, num_classes: int, notes: list[str], dataset: str = ""):
        self.path = path
        self.preprocess = preprocess
        self.num_classes = num_classes
        self.notes = list(notes)
        self.dataset = dataset  # what it was trained on, when the file says
        self.device = torch.device("cpu")  # where batches are put

    @property
    def device_label(self) -> str:
        return str(self.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out = self.forward(x).float()
        return out.flatten(2).mean(2) if out.dim() == 4 else out  # a fully-convolutional model: one cell

    def timed_call(self, x: torch.Tensor):
        """A call that runs the model on `x` (already where the model is): what a benchmark times."""
        return lambda: self.forward(x)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        from cnncli.engine.runtime import check_finite_outputs

        out = self.logits(x)
        check_finite_outputs(out, "the model")
        return out.cpu()


class TorchRunner(Runner):
    """A PyTorch model in eval mode (BatchNorm on its running statistics). `fast`: BatchNorm folded into the
    convolutions (as in the exported files) and NHWC memory for convolutions, about 1.5x on CPU; TorchScript and
    programs run as saved."""

    kind = "pytorch"

    def __init__(
        self, opened, device, *, fast: bool = False, path: str = "", bf16: bool = False, compiled: bool = False
    ):
        from cnncli.engine.runtime import check_finite_weights

        super().__init__(path or opened.path or opened.name, opened.preprocess, opened.spec.num_classes, opened.notes)
        self.dataset = opened.dataset
        check_finite_weights(opened.model, self.path)
        self.device = torch.device(device)
        model, self.channels_last = opened.model.eval(), False
        if fast and opened.rebuildable:
            from cnncli.models._manipulate import fold_batchnorm

            model = fold_batchnorm(model)
            if any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
                model, self.channels_last = model.to(memory_format=torch.channels_last), True
        self.model = model.to(self.device)
        self.bf16 = bf16  # autocast to bfloat16 (a benchmark's torch-bf16 row: training's precision where it has it)
        if compiled:
            self.model = torch.compile(self.model)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from contextlib import nullcontext

        from cnncli.engine.device import evaluation_precision

        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        with evaluation_precision(self.device), autocast:  # the numerics `cnn train` validates with
            return self.model(x)


class OnnxRunner(Runner):
    """An ONNX file in ONNX Runtime (CPU), with the preprocessing its metadata (or the command line) gives."""

    kind = "onnx"

    def __init__(self, path: str, request, *, threads: int | None = None, providers=("CPUExecutionProvider",)):
        from cnncli.engine.runtime import onnx_session

        preprocess, dataset, num_classes, notes = onnx_preprocess(path, request)
        super().__init__(path, preprocess, num_classes, notes, dataset)
        # ONNX Runtime's refusals are exit 2 here, before anything runs
        self.session = onnx_session(path, threads, providers)

    @property
    def device_label(self) -> str:
        return "onnxruntime-" + ("cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu")

    def timed_call(self, x: torch.Tensor):
        """A call that runs the session on `x` and nothing else (the input prepared once): what a benchmark
        times. None when the file takes another batch size."""
        import numpy as np

        inp = self.session.get_inputs()[0]
        if isinstance(inp.shape[0], int) and inp.shape[0] != len(x):
            return None
        feed = {inp.name: x.contiguous().cpu().numpy().astype(np.float32)}
        run = self.session.run
        return lambda: run(None, feed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The session's first output; a static-batch export takes the batch in slices."""
        import numpy as np

        from cnncli.engine.runtime import run_onnx

        arr = x.contiguous().cpu().numpy().astype(np.float32)
        inp = self.session.get_inputs()[0]
        batch = inp.shape[0]
        if isinstance(batch, int) and batch != len(arr):
            parts = [run_onnx(self.session, {inp.name: arr[i : i + batch]})[0] for i in range(0, len(arr), batch)]
            out = np.concatenate(parts)
        else:
            out = run_onnx(self.session, {inp.name: arr})[0]
        return torch.from_numpy(out)


class OpenVinoRunner(Runner):
    """An ONNX file compiled by OpenVINO for the CPU (the `openvino` extra), with the file's preprocessing."""

    kind = "openvino"

    def __init__(self, path: str, request, *, threads: int | None = None):
        import openvino as ov

        preprocess, dataset, num_classes, notes = onnx_preprocess(path, request)
        super().__init__(path, preprocess, num_classes, notes, dataset)
        # f32: OpenVINO would otherwise compute in bf16 on CPUs that have it, and the row is the fp32 file's
        config = {"INFERENCE_PRECISION_HINT": "f32", **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.compiled = ov.Core().compile_model(path, "CPU", config)

    @property
    def device_label(self) -> str:
        return "openvino-cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import numpy as np

        out = self.compiled(x.contiguous().cpu().numpy().astype(np.float32))
        return torch.from_numpy(np.asarray(out[self.compiled.output(0)]).copy())

    def timed_call(self, x: torch.Tensor):
        import numpy as np

        arr = x.contiguous().cpu().numpy().astype(np.float32)
        request = self.compiled.create_infer_request()
        return lambda: request.infer([arr])


def onnx_preprocess(path: str, req) -> tuple[Preprocess, str, int, list[str]]:
    """An ONNX file's preprocessing: the metadata cnn export wrote, else the command line and the graph's input shape
    (the same for every command: a dataset being evaluated never changes it). Returns (preprocess, dataset it was trained on, number of outputs, notes on what was assumed)."""
    from cnncli.analysis.summary import onnx_summary
    from cnncli.export.onnx_format import read_onnx_metadata

    meta = read_onnx_metadata(path, required=())
    facts = onnx_summary(path)
    shape = [v if isinstance(v, int) else None for v in facts.input]
    size = meta.get("input_size") or (req.input_size if req.input_size and req.input_size[0] else None)
    if not size:
        given = req.input_size or (None, None, None)
        size = [shape[i] if i < len(shape) and shape[i] else given[i] for i in range(3)]
    if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise UsageError(f"{path} does not say its input size", "give --in CxHxW")
    outputs = facts.output[0] if facts.output and isinstance(facts.output[0], int) else 0
    from cnncli.checkpoint import ModelSpec
    from cnncli.models.open import resolve_preprocess

    spec = ModelSpec(
        f"onnx:{path}",
        outputs or max(1, len(meta.get("classes") or ()) or len(req.dataset_classes or ()) or 1),
        int(size[0]),
        (int(size[1]), int(size[2])),
    )
    preprocess, notes = resolve_preprocess(spec, req, meta)
    return preprocess, meta.get("dataset") or "", spec.num_classes, [f"{path}: {n}" for n in notes]


def is_onnx(model_arg: str) -> bool:
    """MODEL names an ONNX file (by its content; the reading gate checks the file first)."""
    from cnncli.fileio import check_input, is_onnx_file

    return os.path.lexists(model_arg) and is_onnx_file(check_input(model_arg, "model file", kind="model"))


def open_runner(model_arg: str, request=None, device="cpu", *, fast: bool = False) -> Runner:
    """MODEL (any form the commands take) opened once, ready to run. A bare architecture without asked
    preprocessing gets its own defaults; its random weights are said in the notes."""
    from cnncli.models.open import ModelRequest, open_model, resolve_preprocess

    req = request or ModelRequest()
    if is_onnx(model_arg):
        return OnnxRunner(model_arg, req)
    opened = open_model(model_arg, req)
    runner = TorchRunner(opened, device, fast=fast, path=model_arg)
    if runner.preprocess is None:
        runner.preprocess = resolve_preprocess(opened.spec, req, {})[0]
    if opened.origin == "registry" and not req.weights:
        runner.notes.append(f"{model_arg}: random weights (give a trained model file, or --weights FILE)")
    return runner
