"""The version of rnnkit (`rnnkit.__version__`), importable without the package's public names."""

__version__ = "0.1.0"
