"""File access: stores (folder / zip / URL) and HPA image, channel and mask files."""

from hpasc.io.store import Store, open_store

__all__ = ["Store", "open_store"]
