"""The version of gpunn (read by pyproject.toml, checkpoints and the CLI)."""

__version__ = "0.1.0"
