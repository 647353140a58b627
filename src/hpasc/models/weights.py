"""Load network weights from a Lightning checkpoint or a plain ``state_dict`` file."""

from __future__ import annotations

import dataclasses
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpasc.errors import InputError


def without_initial_weights(model_cfg: Any) -> Any:
    """``model_cfg`` without ImageNet or ``init_from`` weights: a checkpoint brings the weights
    (resuming a run, predicting with a fold), so nothing is downloaded or read for nothing."""
    return dataclasses.replace(model_cfg, pretrained=False, init_from=None)


def check_checkpoint(path: str | Path, fix: str = "copy it again or use another file") -> None:
    """:class:`InputError` naming ``path`` unless it is a complete PyTorch (zip) checkpoint.

    Reads only the archive's directory: a file cut short (a killed copy, a full disk) or a file
    of another kind fails here, before a training run resumes from it.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        raise InputError(
            f"{path}: not a complete PyTorch checkpoint (truncated, or another kind of file); {fix}"
        ) from None
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise InputError(f"{path}: a zip archive, but not a PyTorch checkpoint (no data.pkl)")


def _unreadable(path: Path, exc: Exception) -> InputError:
    """One line for a weight file torch cannot load (torch's own message runs to a page)."""
    if zipfile.is_zipfile(path) or "Weights only load failed" not in str(exc):
        try:
            check_checkpoint(path)
        except InputError as err:
            return err
    if "Weights only load failed" in str(exc):
        return InputError(
            f"{path}: holds Python objects besides tensors, so it is not a weight file hpasc "
            "reads (a Lightning checkpoint or a state_dict saved with torch.save)"
        )
    return InputError(f"{path} is not a readable PyTorch checkpoint ({str(exc).splitlines()[0]})")


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
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of foreign files before failing on them
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise _unreadable(path, exc) from None
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
        warnings.warn(
            f"{path}: {len(result.missing_keys)} missing and {len(result.unexpected_keys)} unexpected keys",
            stacklevel=2,
        )
