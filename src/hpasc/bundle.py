"""Offline bundles for Kaggle-style notebooks, which have no internet.

One zip holds everything a notebook needs to run hpasc with trained models::

    INSTALL.txt                  exact commands (install, where things are, how to predict)
    bundle.json                  what is inside (hpasc version, wheels, runs, other files)
    wheels/hpasc-<v>-py3-none-any.whl and the wheels of the dependencies the image lacks
    runs/<run>/...               each run folder, structure kept, only the files a prediction
                                 needs (RUN_FILE_PATTERNS: configs, checkpoints, tables)
    recipe/<file>                the recipe, when given
    weights/segmentation/...     the HPA U-Net weight files, when given

The hpasc wheel is built from the source tree of the imported package (``pip wheel --no-deps
--no-build-isolation``), so a bundle always carries the code that made it. Dependency wheels come
from ``pip wheel --no-deps`` (index, pip cache or ``find_links``), pinned to the versions installed
here when they are installed. Which dependencies: :data:`PROFILES` (``kaggle``: the packages a
Kaggle image lacks or ships too old), adjusted with ``with_`` / ``without``.

The zip is written to a temporary file beside ``out`` and renamed into place.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import hpasc
from hpasc import __version__
from hpasc.errors import ConfigError, InputError, OutputError
from hpasc.io.atomic import atomic_path

__all__ = [
    "KAGGLE_EXTRA_WHEELS",
    "PROFILES",
    "RUN_FILE_PATTERNS",
    "BundleSummary",
    "build_dependency_wheels",
    "build_hpasc_wheel",
    "collect_run_files",
    "dependency_list",
    "install_text",
    "make_bundle",
    "project_root",
]

#: Dependencies of hpasc that a Kaggle Python image is expected to lack (or ship older than
#: hpasc needs), with their own dependencies that the image lacks. The image
#: changes: check ``pip list`` in a notebook and adjust with ``--with`` / ``--without``.
#: antlr4-python3-runtime is omegaconf's parser runtime (some of its versions exist only as
#: source archives: ``pip wheel`` builds those); shellingham is typer's; a typer in the image
#: may be older than the one hpasc needs. Unverified against today's image: a guide, not a fact.
KAGGLE_EXTRA_WHEELS: tuple[str, ...] = (
    "omegaconf",
    "antlr4-python3-runtime",
    "iterative-stratification",
    "typer",
    "shellingham",
)
PROFILES: dict[str, tuple[str, ...]] = {"kaggle": KAGGLE_EXTRA_WHEELS, "none": ()}
#: Files of a run folder that go into a bundle (anything else — logs, images — stays out).
RUN_FILE_PATTERNS: tuple[str, ...] = (
    "*.yaml",
    "*.yml",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.csv",
    "*.json",
)
# Files of the project root needed to build the wheel (src/ is copied too).
_BUILD_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE")
# Already-compressed entries are stored, not deflated again.
_STORED = (".whl", ".ckpt", ".pt", ".pth", ".zip", ".gz")
_BARE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _canonical(name: str) -> str:
    """PEP 503 normalised project name of a name or requirement (``Foo_Bar>=1`` -> ``foo-bar``)."""
    bare = re.split(r"[\s<>=!~;\[@]", name.strip(), maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def dependency_list(
    profile: str = "kaggle", with_: Iterable[str] = (), without: Iterable[str] = ()
) -> list[str]:
    """The dependency requirements a bundle carries besides hpasc.

    Parameters
    ----------
    profile
        A key of :data:`PROFILES` (``kaggle`` or ``none``).
    with_
        Extra packages: names (pinned to the installed version by :func:`build_dependency_wheels`)
        or requirement specifiers (``typer==0.12.5``, taken as given).
    without
        Names to drop from the profile's list.

    Raises
    ------
    ConfigError
        Unknown profile, a ``without`` name not in the list, or ``hpasc`` itself named.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown wheel profile {profile!r}; choose one of {sorted(PROFILES)}")
    base = list(PROFILES[profile])
    drop = {_canonical(n) for n in without}
    unknown = drop - {_canonical(n) for n in base}
    if unknown:
        raise ConfigError(
            f"--without {', '.join(sorted(unknown))}: not in the {profile!r} list "
            f"({', '.join(base) or 'empty'})"
        )
    out = [n for n in base if _canonical(n) not in drop]
    for req in with_:
        name = _canonical(req)
        if name == "hpasc":
            raise ConfigError("--with hpasc: hpasc is always in the bundle (built from source)")
        out = [n for n in out if _canonical(n) != name] + [req.strip()]
    return out


def _pinned(requirement: str) -> str:
    """``name`` -> ``name==<installed version>``; specifiers and uninstalled names unchanged."""
    if not _BARE_NAME.fullmatch(requirement.strip()):
        return requirement  # has a specifier, extras or a URL: the user's choice
    try:
        return f"{requirement}=={importlib.metadata.version(requirement)}"
    except importlib.metadata.PackageNotFoundError:
        return requirement


def project_root(source: str | Path | None = None) -> Path:
    """The hpasc source tree to build the wheel from: ``source``, or the one of this package.

    Raises
    ------
    InputError
        No ``pyproject.toml`` with ``src/hpasc`` there (e.g. hpasc installed from a wheel).
    """
    root = Path(source) if source is not None else Path(hpasc.__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file() or not (root / "src/hpasc").is_dir():
        raise InputError(
            f"no hpasc source tree at {root} (pyproject.toml and src/hpasc); hpasc seems to be "
            "installed from a wheel — pass --source DIR with a checkout of hpasc"
        )
    return root


def _pip(args: Sequence[str], what: str, fix: str) -> None:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env, check=False
    )
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        reason = " | ".join(ln for ln in lines if ln.startswith("ERROR")) or (lines or ["?"])[-1]
        raise InputError(f"pip could not make wheels for {what}: {reason}; {fix}")


def build_hpasc_wheel(dest: str | Path, source: str | Path | None = None) -> Path:
    """Build the hpasc wheel (no dependencies) from its source tree into ``dest``.

    The tree is copied first, so the build leaves nothing (``build/``, ``*.egg-info``) in it.
    No build isolation: the build backend of this environment is used, no download happens.
    """
    root = project_root(source)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hpasc-src-") as tmp:
        tree = Path(tmp) / "hpasc"
        shutil.copytree(
            root / "src",
            tree / "src",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"),
        )
        for name in _BUILD_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, tree / name)
        before = set(dest.glob("hpasc-*.whl"))
        _pip(
            ["wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(dest), str(tree)],
            f"hpasc (source {root})",
            "check that setuptools is installed in this environment",
        )
    built = sorted(set(dest.glob("hpasc-*.whl")) - before) or sorted(dest.glob("hpasc-*.whl"))
    return built[-1]


def build_dependency_wheels(
    requirements: Sequence[str],
    dest: str | Path,
    *,
    find_links: Sequence[str | Path] = (),
    no_index: bool = False,
) -> list[Path]:
    """Wheels (no dependencies of their own) for ``requirements`` into ``dest``.

    Bare names are pinned to the version installed here, so the notebook gets what was tested.
    ``find_links`` adds folders or pages of wheels; ``no_index`` uses only those (and then
    builds source archives with this environment's build backend, without isolation).

    Returns
    -------
    list of Path
        The wheel files added to ``dest``, sorted.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return []
    before = set(dest.glob("*.whl"))
    args = ["wheel", "--no-deps", "--wheel-dir", str(dest)]
    if no_index:
        args += ["--no-index", "--no-build-isolation"]
    for link in find_links:
        args += ["--find-links", str(link)]
    pinned = [_pinned(r) for r in requirements]
    _pip(
        args + pinned,
        ", ".join(pinned),
        "give --find-links DIR with those wheels, or leave the package out with --without NAME",
    )
    return sorted(set(dest.glob("*.whl")) - before)


def collect_run_files(run: str | Path) -> list[Path]:
    """Files of a run folder that a bundle carries (:data:`RUN_FILE_PATTERNS`), relative, sorted.

    Any folder layout is accepted (e.g. ``RUN/fold-0/config.yaml``, ``RUN/fold-0/last.ckpt``).

    Raises
    ------
    InputError
        ``run`` is not a folder, or holds none of those files.
    """
    root = Path(run)
    if not root.is_dir():
        raise InputError(f"run folder not found: {root}; give the folder a training wrote")
    files = sorted(
        {
            p.relative_to(root)
            for pattern in RUN_FILE_PATTERNS
            for p in root.rglob(pattern)
            if p.is_file()
        }
    )
    if not files:
        raise InputError(
            f"run folder {root} holds no {' / '.join(RUN_FILE_PATTERNS)} file; "
            "is it the folder of a finished training?"
        )
    return files


@dataclass
class BundleSummary:
    """What went into a bundle."""

    out: Path
    wheels: list[str] = field(default_factory=list)
    runs: dict[str, list[str]] = field(default_factory=dict)
    recipe: str | None = None
    weights: list[str] = field(default_factory=list)
    nbytes: int = 0

    def __str__(self) -> str:
        n_files = sum(len(v) for v in self.runs.values())
        return (
            f"wrote {self.out} ({self.nbytes / 1e6:.1f} MB): {len(self.wheels)} wheel(s), "
            f"{len(self.runs)} run(s) with {n_files} file(s)"
            + (f", recipe {self.recipe}" if self.recipe else "")
            + (f", {len(self.weights)} segmentation weight file(s)" if self.weights else "")
        )


def install_text(summary: BundleSummary) -> str:
    """The ``INSTALL.txt`` of a bundle: exact commands for a notebook without internet."""
    wheels = "\n".join(f"    {w}" for w in summary.wheels)
    runs = " ".join(f"runs/{r}" for r in summary.runs) or "runs/<run>"
    lines = [
        f"hpasc {__version__} offline bundle",
        "",
        "Contents",
        "  wheels/                hpasc and the dependencies a Kaggle image lacks:",
        wheels,
        f"  runs/                  trained runs, one folder each ({', '.join(summary.runs)})",
    ]
    if summary.recipe:
        lines.append(f"  recipe/{summary.recipe}")
    if summary.weights:
        lines.append("  weights/segmentation/  HPA U-Net weights: " + ", ".join(summary.weights))
    lines += [
        "  bundle.json            the same list, machine-readable",
        "",
        "1. Go to the bundle. Added to a notebook as a Kaggle dataset it is already unpacked:",
        "     cp -r /kaggle/input/<dataset> /kaggle/working/hpasc-bundle",
        "     cd /kaggle/working/hpasc-bundle",
        "   elsewhere:",
        f"     unzip {summary.out.name} -d hpasc-bundle && cd hpasc-bundle",
        "",
        "2. Install without internet (in a notebook cell, prefix with !):",
        "     pip install --no-index --find-links wheels hpasc",
        "   pip takes each dependency from the image when it is there and recent enough, else",
        "   from wheels/. If it reports one missing, rebuild the bundle with --with <package>.",
        "   Check:  hpasc --version",
        "",
        "3. The checkpoints stay where they are; give the run folders to hpasc, e.g.",
        f"     hpasc predict fields /kaggle/input/hpa-single-cell-image-classification/test "
        f"--runs {runs} -o /kaggle/working/predictions",
    ]
    if summary.weights:
        lines += [
            "   Segmentation with the HPA U-Net uses the weights in weights/segmentation/:",
            "     hpasc segment IMAGES MASKS --method hpa-unet "
            "--nuclei-model weights/segmentation/nuclei-model.pth "
            "--cell-model weights/segmentation/cell-model.pth",
        ]
    if summary.recipe:
        lines += [
            "   The recipe runs as:",
            f"     hpasc run recipe/{summary.recipe} --data /kaggle/input/<data>",
        ]
    return "\n".join(lines) + "\n"


def _files_under(folder: Path) -> list[Path]:
    return sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())


def make_bundle(
    out: str | Path,
    runs: Sequence[str | Path],
    *,
    recipe: str | Path | None = None,
    segmentation_weights: str | Path | None = None,
    profile: str = "kaggle",
    with_: Iterable[str] = (),
    without: Iterable[str] = (),
    find_links: Sequence[str | Path] = (),
    no_index: bool = False,
    source: str | Path | None = None,
) -> BundleSummary:
    """Write an offline bundle zip (see the module docstring for its layout).

    Parameters
    ----------
    out
        The zip to write (replaced atomically if it exists).
    runs
        Run folders; each goes to ``runs/<folder name>/`` with :func:`collect_run_files`.
    recipe
        A recipe file, copied to ``recipe/``.
    segmentation_weights
        A folder of HPA U-Net weight files, copied to ``weights/segmentation/``.
    profile, with_, without
        Which dependency wheels (:func:`dependency_list`).
    find_links, no_index
        Where pip looks for dependency wheels (:func:`build_dependency_wheels`).
    source
        hpasc source tree for its wheel (default: the tree of this package).

    Returns
    -------
    BundleSummary
    """
    out = Path(out)
    requirements = dependency_list(profile, with_, without)
    run_files: dict[str, tuple[Path, list[Path]]] = {}
    for run in runs:
        root = Path(run).resolve()
        if root.name in run_files:
            raise InputError(
                f"two runs are named {root.name!r} ({run_files[root.name][0]} and {root}); "
                "each run goes to runs/<folder name>/ — rename one folder"
            )
        run_files[root.name] = (root, collect_run_files(root))
    if recipe is not None and not Path(recipe).is_file():
        raise InputError(f"recipe not found: {recipe}")
    weights_dir = Path(segmentation_weights) if segmentation_weights is not None else None
    weight_files = _files_under(weights_dir) if weights_dir and weights_dir.is_dir() else []
    if weights_dir is not None and not weight_files:
        raise InputError(f"no segmentation weight files in {weights_dir}; give the weights folder")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {out.parent} does not exist")

    summary = BundleSummary(out=out)
    with atomic_path(out) as tmp_zip, tempfile.TemporaryDirectory(prefix="hpasc-wheels-") as wd:
        wheels = [build_hpasc_wheel(wd, source)]
        wheels += build_dependency_wheels(
            requirements, wd, find_links=find_links, no_index=no_index
        )
        summary.wheels = [w.name for w in wheels]
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for wheel in wheels:
                _add(zf, wheel, f"wheels/{wheel.name}")
            for name, (root, files) in run_files.items():
                summary.runs[name] = [f.as_posix() for f in files]
                for rel in files:
                    _add(zf, root / rel, f"runs/{name}/{rel.as_posix()}")
            if recipe is not None:
                summary.recipe = Path(recipe).name
                _add(zf, Path(recipe), f"recipe/{summary.recipe}")
            for rel in weight_files:
                summary.weights.append(rel.as_posix())
                _add(zf, weights_dir / rel, f"weights/segmentation/{rel.as_posix()}")
            zf.writestr("INSTALL.txt", install_text(summary))
            zf.writestr("bundle.json", json.dumps(_manifest(summary, requirements), indent=2))
    summary.nbytes = out.stat().st_size
    return summary


def _add(zf: zipfile.ZipFile, path: Path, arcname: str) -> None:
    stored = path.name.endswith(_STORED)
    zf.write(path, arcname, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)


def _manifest(summary: BundleSummary, requirements: Sequence[str]) -> dict:
    return {
        "hpasc_version": __version__,
        "requested_dependencies": list(requirements),
        "wheels": summary.wheels,
        "runs": summary.runs,
        "recipe": summary.recipe,
        "segmentation_weights": summary.weights,
    }
