"""Dataset definitions: every module in this folder is imported, and registers its datasets.

Adding a dataset is one file here with one `@register_dataset` function (see docs/extending.md). Modules here
import torch only inside their loaders: `cnn train --help` lists the datasets without paying for torch.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
