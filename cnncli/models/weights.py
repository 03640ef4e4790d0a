"""`--weights`: the one reader every command takes a weights file through (train starts from it, the other commands
run it), and how an architecture fits the tensors it holds.

The file goes through `files.read_model_file` (the reading gate and the trust levels: a whole pickle or a program
only with --trust-code); the weights decide the layout, as everywhere: a built-in model whose layout follows the
image size (resnet18's CIFAR stem below 96 px) is built the way the weights were.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.errors import UsageError


@dataclass
class Weights:
    """A weights file read once: its tensors, where they sat in the file (`" (a state dict under 'model')"`), and
    how the named architecture fits them (None: another architecture, whose matching tensors train can still take)."""

    path: str
    state: dict
    where: str
    fit: object | None  # models.detect.Fit
    recorded: dict  # the preprocessing the file records (mean, std, classes), as a state dict's metadata reads

    def build_size(self, source: str, image_size) -> tuple[int, int] | None:
        """The layout's size when it differs from the image size (built-in models only), else None."""
        if self.fit is None or source != "builtin" or tuple(self.fit.build_size) == tuple(image_size):
            return None
        return tuple(self.fit.build_size)

    def describe(self, build_size) -> str:
        """`w.pt (a state dict under 'model'), layout built for 32x32 as the weights are`, for the log."""
        layout = f", layout built for {build_size[0]}x{build_size[1]} as the weights are" if build_size else ""
        return f"{self.path}{self.where}{layout}"


def read_weights(path: str, name: str, input_size, *, trust_pickle: bool, exact: bool) -> Weights:
    """Read `path` and fit `name` to it. `exact` (running the weights): the architecture must fit them, or
    UsageError names the first tensors that do not; otherwise (training from them) a built-in architecture is fitted
    when it can be, and anything else is left to the partial transfer."""
    from cnncli.models._registry import resolve
    from cnncli.models.detect import fit_named
    from cnncli.models.files import read_model_file, weights_of

    if path.endswith(".safetensors"):  # timm's published weights, from the Hugging Face cache
        from safetensors.torch import load_file

        return Weights(path, load_file(path), " (safetensors)", None, {})
    mf = read_model_file(path, trust_pickle=trust_pickle)
    state, where = weights_of(mf)
    fit = None
    if exact:
        fit = fit_named(name, state, input_size, what=path)
    elif resolve(name).source == "builtin":
        try:
            fit = fit_named(name, state, input_size)
        except UsageError:  # another architecture: whatever fits is loaded into the default layout
            fit = None
    return Weights(path, state, where, fit, recorded_preprocess(mf))


def recorded_preprocess(mf) -> dict:
    """What a model file says about its inputs: a cnncli checkpoint's preprocessing, or the metadata beside a state
    dict (the same keys either way, so the weights are preprocessed alike whichever way they are given)."""
    if mf.kind == "checkpoint":
        pre = mf.checkpoint.preprocess
        return {"mean": pre.mean, "std": pre.std, "classes": pre.classes}
    return {k: v for k, v in mf.metadata.items() if k in ("mean", "std", "classes")}
