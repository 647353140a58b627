"""The published HPA segmentation weights: where they live, how to fetch them, how to load them.

The files on Zenodo are whole pickled ``pytorch_zoo.unet.DPNUnet`` modules. They load here
without ``pytorch_zoo``: a restricted unpickler maps the six ``pytorch_zoo`` classes to empty
stand-in modules, resolves the few torch and stdlib names such a pickle needs, and refuses every
other global (a pickle can name any callable, e.g. ``os.system``, and unpickling calls it). The
stand-in module's state_dict is then loaded into our own :class:`~hpasc.segment.dpn_unet.DPNUnet`.
Plain state_dict files load through the same unpickler.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import types
import urllib.error
import urllib.request
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from hpasc.errors import InputError, OutputError
from hpasc.io.atomic import atomic_open

ZENODO_RECORD = "4665863"
#: Files of the Zenodo record, by role.
WEIGHT_FILES: dict[str, str] = {
    "nuclei": "dpn_unet_nuclei_v1.pth",
    "cell": "dpn_unet_cell_3ch_v1.pth",
    "cell-2ch": "dpn_unet_cell_v2.pth",
}
#: Where ``download_weights`` fetches ``<base>/<file name>``; override with HPASC_WEIGHTS_URL.
DEFAULT_URL = f"https://zenodo.org/record/{ZENODO_RECORD}/files"
#: Zenodo's description of the record (file sizes and MD5s); override with HPASC_WEIGHTS_MANIFEST.
DEFAULT_MANIFEST = f"https://zenodo.org/api/records/{ZENODO_RECORD}"
URL_ENV = "HPASC_WEIGHTS_URL"
MANIFEST_ENV = "HPASC_WEIGHTS_MANIFEST"

# --------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------

#: Classes of pytorch_zoo that a published model pickles; mapped by package + class name
#: because ``pytorch_zoo.unet`` re-exports some of them from ``pytorch_zoo.abstract_model``.
ZOO_CLASSES = (
    "DPNUnet",
    "ConvBottleneck",
    "UnetDecoderBlock",
    "DualPathBlock",
    "BnActConv2d",
    "CatBnAct",
)
#: Every other global such a pickle (or a plain state_dict) may name.
ALLOWED_GLOBALS = frozenset(
    {
        ("torch.nn.modules.container", "ModuleList"),
        ("torch.nn.modules.container", "Sequential"),
        ("torch.nn.modules.conv", "Conv2d"),
        ("torch.nn.modules.activation", "ReLU"),
        ("torch.nn.modules.upsampling", "Upsample"),
        ("torch.nn.modules.batchnorm", "BatchNorm2d"),
        ("torch.nn.modules.pooling", "MaxPool2d"),
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("torch", "FloatStorage"),
        ("torch", "LongStorage"),
        ("__builtin__", "set"),
        ("builtins", "set"),
        # the ``_backend`` attribute of modules pickled by torch < 1.0 (a no-op in torch 2)
        ("torch.nn.backends.thnn", "_get_thnn_function_backend"),
    }
)


def _stand_in(name: str) -> type[nn.Module]:
    # Unpickling never calls __init__; nn.Module.__setstate__ fills what old pickles lack.
    return type(name, (nn.Module,), {"__module__": __name__, "__doc__": f"Stand-in for {name}."})


STAND_INS: dict[str, type[nn.Module]] = {name: _stand_in(name) for name in ZOO_CLASSES}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allowlist."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the names an HPA model file (or a state_dict) needs."""

    def find_class(self, module: str, name: str) -> object:
        if module.split(".")[0] == "pytorch_zoo" and name in STAND_INS:
            return STAND_INS[name]
        if (module, name) in ALLOWED_GLOBALS:
            if module == "__builtin__":
                module = "builtins"
            return super().find_class(module, name)
        raise RefusedGlobal(
            f"refusing to load global {module}.{name}: not part of an HPA segmentation model"
        )


def _restricted_load(file: object, **kwargs: object) -> object:
    return RestrictedUnpickler(file, **kwargs).load()


#: What ``torch.load(pickle_module=...)`` needs: an Unpickler class and a load function.
restricted_pickle = types.SimpleNamespace(
    __name__="hpasc_restricted_pickle", Unpickler=RestrictedUnpickler, load=_restricted_load
)


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """The tensors of an HPA model file: a whole pickled DPNUnet or a state_dict.

    Raises
    ------
    InputError
        The file is missing, refers to a global outside the allowlist, or holds no state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(missing_weights_message(path))
    try:
        with warnings.catch_warnings():
            # Stand-ins have other source than the pickled classes; torch warns about each.
            warnings.simplefilter("ignore")
            obj = torch.load(
                path, map_location="cpu", pickle_module=restricted_pickle, weights_only=False
            )
    except RefusedGlobal as exc:
        raise InputError(f"{path}: {exc}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable torch file ({exc})") from None
    if isinstance(obj, nn.Module):
        state = obj.state_dict()
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = obj["state_dict"]
    elif isinstance(obj, Mapping):
        state = obj
    else:
        raise InputError(f"{path}: holds a {type(obj).__name__}, not a model or a state_dict")
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: the state_dict holds values that are not tensors")
    # A state_dict saved from a DataParallel wrapper prefixes every key with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return OrderedDict(state)


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an HPA weight file into ``model`` (a :class:`DPNUnet`), checking every key and shape.

    Files written by torch < 0.4.1 lack the BatchNorm ``num_batches_tracked`` counters; exactly
    those may be missing (they are set to 0). Any other missing or unexpected key is an error.
    """
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    tolerated = all(k.endswith("num_batches_tracked") for k in missing)
    if unexpected or (missing and not tolerated):
        raise InputError(
            f"{path}: not an HPA DPN-UNet state_dict ({len(missing)} keys missing, e.g. "
            f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})"
        )
    for key in missing:
        state[key] = torch.zeros((), dtype=expected[key].dtype)
    wrong = [k for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise InputError(
            f"{path}: {len(wrong)} tensors have the wrong shape, e.g. {k} "
            f"{tuple(state[k].shape)} instead of {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True, assign=_is_meta(model))
    return model


def _is_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def missing_weights_message(path: Path) -> str:
    """One line that says where the published weights live and how to fetch them."""
    return (
        f"segmentation weights not found: {path}; the HPA weights are published on Zenodo record "
        f"{ZENODO_RECORD} ({WEIGHT_FILES['nuclei']}, {WEIGHT_FILES['cell']}, "
        f"{WEIGHT_FILES['cell-2ch']}): run `hpasc weights download DIR`, then pass "
        f"--nuclei-model DIR/{WEIGHT_FILES['nuclei']} --cell-model DIR/{WEIGHT_FILES['cell']}"
    )


def default_weights_dir() -> Path:
    """``$HPASC_WEIGHTS_DIR`` or ``~/.cache/hpasc/weights``."""
    env = os.environ.get("HPASC_WEIGHTS_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hpasc" / "weights"


# --------------------------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Downloaded:
    """One fetched (or already present) weight file."""

    path: Path
    size: int
    md5: str
    verified: bool  # True when a published size and MD5 matched
    skipped: bool  # True when the file was already there and matched


def download_weights(
    directory: str | Path,
    roles: tuple[str, ...] = ("nuclei", "cell"),
    *,
    base_url: str | None = None,
    manifest_url: str | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
    timeout: float = 60.0,
) -> list[Downloaded]:
    """Fetch the published weight files into ``directory`` over HTTP(S).

    Each file is streamed to a temporary name and renamed only after its size (against the
    HTTP Content-Length and the published size) and MD5 (against the published one, when the
    record's manifest can be read) check out.

    Parameters
    ----------
    directory : folder to write ``dpn_unet_*.pth`` into (created).
    roles : which files, keys of :data:`WEIGHT_FILES`.
    base_url : files are fetched from ``<base_url>/<file name>``; default ``$HPASC_WEIGHTS_URL``
        or :data:`DEFAULT_URL`.
    manifest_url : JSON with the published sizes and MD5s (Zenodo's record API format); default
        ``$HPASC_WEIGHTS_MANIFEST`` or :data:`DEFAULT_MANIFEST`. ``""`` skips it.
    overwrite : fetch again even when a matching file is present.
    progress : called as ``progress(file_name, bytes_done, bytes_total_or_None)``.
    """
    unknown = [r for r in roles if r not in WEIGHT_FILES]
    if unknown:
        raise ValueError(f"unknown weight roles {unknown}; known: {sorted(WEIGHT_FILES)}")
    base = (base_url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/")
    if manifest_url is None:
        manifest_url = os.environ.get(MANIFEST_ENV, DEFAULT_MANIFEST)
    directory = Path(directory)
    created = not directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {directory}: {exc}") from None
    try:
        return _download_all(directory, roles, base, manifest_url, overwrite, progress, timeout)
    except BaseException:
        if created:  # nothing fetched: leave no empty folder behind
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def _download_all(directory, roles, base, manifest_url, overwrite, progress, timeout):
    published = _read_manifest(manifest_url, timeout) if manifest_url else {}
    results = []
    for role in roles:
        name = WEIGHT_FILES[role]
        target = directory / name
        known = published.get(name)
        if target.is_file() and not overwrite:
            md5 = _md5_file(target)
            if known is None or (known == (target.stat().st_size, md5)):
                results.append(
                    Downloaded(target, target.stat().st_size, md5, known is not None, True)
                )
                continue
        results.append(_fetch(f"{base}/{name}", target, known, progress, timeout))
    return results


def _read_manifest(url: str, timeout: float) -> dict[str, tuple[int, str]]:
    """{file name: (size, md5)} from a Zenodo record description; {} if it cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            record = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        warnings.warn(
            f"cannot read the weights manifest {url} ({exc}); sizes and MD5s are not "
            "checked against the published ones",
            stacklevel=3,
        )
        return {}
    files = record.get("files", [])
    if isinstance(files, Mapping):  # InvenioRDM layout: {"entries": {name: {...}}}
        files = list(files.get("entries", {}).values())
    out = {}
    for entry in files:
        name = entry.get("key") or entry.get("filename")
        checksum = str(entry.get("checksum", ""))
        if name and checksum.startswith("md5:") and "size" in entry:
            out[name] = (int(entry["size"]), checksum[4:])
    return out


def _fetch(
    url: str,
    target: Path,
    known: tuple[int, str] | None,
    progress: Callable[[str, int, int | None], None] | None,
    timeout: float,
) -> Downloaded:
    digest = hashlib.md5()
    done = 0
    try:
        # The file appears under its name only once complete and verified; any error drops it.
        with atomic_open(target) as out:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length else (known[0] if known else None)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(target.name, done, total)
            md5 = digest.hexdigest()
            problem = None
            if length and done != int(length):
                problem = f"got {done} bytes, the server announced {length}"
            elif known and done != known[0]:
                problem = f"got {done} bytes, the record lists {known[0]}"
            elif known and md5 != known[1]:
                problem = f"MD5 {md5} differs from the published {known[1]}"
            if problem:
                raise InputError(f"download of {url} is corrupt: {problem}; run the command again")
    except (urllib.error.URLError, OSError) as exc:
        raise InputError(f"cannot download {url}: {exc}") from None
    return Downloaded(target, done, md5, known is not None, False)


def _md5_file(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
