"""cnncli: the `cnn` command for convolutional neural networks."""

__version__ = "0.8.2"
