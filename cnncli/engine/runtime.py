"""Running what the user gave, with its refusals in one place: ONNX files (read and run in ONNX Runtime) and the
checks every runner makes on numbers (NaN or infinite weights and outputs are named, never scored).

`read_onnx(path)` is the one ONNX reader (metadata, summary, describe); `onnx_session(path)` the one place an ONNX
Runtime session is made: a file ONNX Runtime refuses (an invalid graph, an operator or domain it does not have, a
graph with several inputs) is exit 2 with a one-line reason, not the runtime's text and exit 1.
"""

from __future__ import annotations

from cnncli.errors import UsageError, WorkFailed, shown
from cnncli.fileio import check_input


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return shown(text.splitlines()[0] if text else type(e).__name__, 300)


def read_onnx(path: str):
    """An ONNX file's ModelProto (external data not loaded), through the reading gate."""
    import onnx

    check_input(path, "ONNX file", kind="model")
    try:
        return onnx.load(path, load_external_data=False)
    except Exception as e:
        raise UsageError(
            f"unreadable ONNX file {shown(path)}: {_first_line(e)}",
            "expected an .onnx file written by torch.onnx or cnn export",
        ) from None


def onnx_session(path: str, threads: int | None = None, providers=("CPUExecutionProvider",)):
    """An ONNX Runtime session (on the CPU unless `providers` say otherwise) for a user's file, with `threads`
    intra-op threads (None: ONNX Runtime's choice) and one inter-op thread; UsageError for anything the runtime
    refuses."""
    import onnxruntime as ort

    from cnncli.errors import raise_if_interrupted

    check_input(path, "ONNX file", kind="model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(path, options, providers=list(providers))
    except Exception as e:
        raise_if_interrupted()
        raise UsageError(
            f"ONNX Runtime cannot run {shown(path)}: {_refusal(e)}",
            "re-export it (cnn export MODEL --onnx) or check the operators it uses",
        ) from None
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise UsageError(
            f"{shown(path)} has {len(inputs)} graph inputs ({', '.join(shown(i.name, 40) for i in inputs[:4])})",
            "cnn runs image classifiers with one image input",
        )
    if "float" not in inputs[0].type:
        raise UsageError(
            f"{shown(path)} takes {inputs[0].type}, not a float image tensor",
            "cnn runs image classifiers with one float image input",
        )
    return sess


def _refusal(e: Exception) -> str:
    """ONNX Runtime's reason, without its source-file prefixes."""
    text = _first_line(e)
    for marker in ("] ", "Exception during initialization: "):
        if marker in text:
            text = text.rsplit(marker, 1)[-1]
    return f"{type(e).__name__}: {text}"


def run_onnx(sess, feed: dict):
    """sess.run; an input the graph refuses (a shape or type it was not exported for) is the file's problem."""
    from cnncli.errors import raise_if_interrupted

    try:
        return sess.run(None, feed)
    except Exception as e:
        raise_if_interrupted()
        if type(e).__name__ in ("InvalidArgument", "InvalidGraph", "NotImplemented", "Fail"):
            raise UsageError(
                f"ONNX Runtime cannot run this file on a {'x'.join(map(str, next(iter(feed.values())).shape))} "
                f"input: {_refusal(e)}",
                "check --in, or re-export the model",
            ) from None
        raise


# ----------------------------------------------------------------------------------------------------- numbers


def first_nonfinite(model) -> str | None:
    """The name of the first parameter or buffer holding NaN or an infinity, or None."""
    import torch

    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_finite_weights(model, what: str) -> None:
    """NaN or infinite weights: exit 1 naming the tensor (nothing scored or written from them)."""
    bad = first_nonfinite(model)
    if bad is not None:
        raise WorkFailed(
            f"{shown(what)} has NaN or infinite values in {shown(bad)}",
            "the weights are broken (a diverged run?); use an earlier checkpoint",
        )


def check_finite_outputs(logits, what: str) -> None:
    """Outputs with NaN or infinities are never turned into an accuracy or a class."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        n = int((~torch.isfinite(logits)).any(dim=-1).sum()) if logits.dim() > 1 else 1
        raise WorkFailed(
            f"{shown(what)} outputs NaN or infinite scores for {n} of {len(logits)} inputs",
            "the model's weights or its input preprocessing are broken",
        )
