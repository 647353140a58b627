"""hpasc: per-cell protein localisation in Human Protein Atlas images."""

__version__ = "0.1.0"
