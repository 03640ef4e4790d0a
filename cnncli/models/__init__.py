"""The model registry, the built-in families (importing this package registers them) and the front door."""

from cnncli.models import lenet, mobilenet, resnet, simple, vgg  # noqa: F401  (registration)
from cnncli.models._registry import (
    ModelInfo,
    count_params,
    get_model,
    is_user_model,
    list_models,
    load_user_class,
    register_model,
    resolve,
)
from cnncli.models.open import OpenedModel, build_model, model_from_checkpoint, open_model

__all__ = [
    "ModelInfo",
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
