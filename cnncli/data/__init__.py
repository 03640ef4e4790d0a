"""Datasets and loaders."""

from cnncli.data.datasets import DATASETS, FolderData, TensorData, default_data_dir, load_dataset
from cnncli.data.loader import FolderLoader, TensorLoader, make_loader

__all__ = ["DATASETS", "FolderData", "TensorData", "default_data_dir", "load_dataset", "FolderLoader",
           "TensorLoader", "make_loader"]
