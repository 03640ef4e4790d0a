"""Models: the registry of names (`_registry`), building one from a name (`_factory`), changing a built one
(`_manipulate`), the built-in families (importing this package registers them), reading model files (`files`),
and the front door every command opens a model through (`open`)."""

from cnncli.models import lenet, mobilenet, resnet, simple, vgg  # noqa: F401  (registration)
from cnncli.models._factory import count_params, get_model, load_user_class
from cnncli.models._manipulate import adapt_in_channels, meta_twin, no_inplace
from cnncli.models._registry import ModelInfo, is_user_model, list_models, register_model, resolve
from cnncli.models.open import OpenedModel, build_model, model_from_checkpoint, open_model

__all__ = [
    "ModelInfo",
    "adapt_in_channels",
    "meta_twin",
    "no_inplace",
    "count_params",
    "get_model",
    "is_user_model",
    "list_models",
    "load_user_class",
    "register_model",
    "resolve",
    "OpenedModel",
    "build_model",
    "model_from_checkpoint",
    "open_model",
]
