"""The model registry and the built-in families (importing this package registers them)."""

from cnncli.models import lenet, mobilenet, resnet, simple, vgg  # noqa: F401  (registration)
from cnncli.models._registry import (
    ModelInfo,
    count_params,
    get_model,
    list_models,
    load_user_class,
    register_model,
    resolve,
)

__all__ = ["ModelInfo", "count_params", "get_model", "list_models", "load_user_class", "register_model", "resolve"]
