"""Load network weights from a Lightning checkpoint or a plain ``state_dict`` file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hpasc.errors import InputError


def read_state_dict(path: str | Path, prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The network weights stored in ``path``.

    A Lightning ``.ckpt`` holds them under ``state_dict`` with the module's attribute name as
    prefix (``model.``), which is removed; a plain ``state_dict`` (``.pt``/``.pth``) is returned
    as is (a leading ``module.`` from DataParallel/DDP is removed too).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise InputError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise InputError(f"{path} holds no state_dict")
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load the weights of ``path`` into ``model``; a mismatch names the file and the keys."""
    state = read_state_dict(path)
    try:
        result = model.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).splitlines()[:3]
        raise InputError(f"{path} does not fit this model: {' '.join(first)}") from exc
    if not strict and (result.missing_keys or result.unexpected_keys):
        import warnings

        warnings.warn(
            f"{path}: {len(result.missing_keys)} missing and {len(result.unexpected_keys)} unexpected keys",
            stacklevel=2,
        )
