"""Datasets and loaders.

Importing this package loads the dataset registry and every definition in `cnncli/data/sets/` without torch
(so `cnn train --help` can list them); the loaders and dataset types are imported on first use.
"""

from cnncli.data import sets  # noqa: F401  (registration)
from cnncli.data._registry import (
    DatasetInfo,
    dataset_names,
    default_data_dir,
    get_dataset_info,
    list_datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)

_LAZY = {
    "TensorData": "cnncli.data.datasets",
    "FolderData": "cnncli.data.datasets",
    "tensor_dataset": "cnncli.data.datasets",
    "TensorLoader": "cnncli.data.loader",
    "FolderLoader": "cnncli.data.loader",
    "make_loader": "cnncli.data.loader",
}


def __getattr__(name: str):
    if name in _LAZY:  # the torch-backed parts, imported when first asked for
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DatasetInfo",
    "dataset_names",
    "default_data_dir",
    "get_dataset_info",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "unregister_dataset",
    *_LAZY,
]
