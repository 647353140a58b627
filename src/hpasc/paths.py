"""The one path rule of hpasc (``docs/paths.md``).

* A relative path typed on the command line or written in a recipe is relative to the current
  directory, as for every command-line tool. ``${data}``, ``${work}``, ``${out}`` and
  ``${step:NAME}`` in recipes expand to absolute paths.
* Only the paths written inside a config file's ``data:`` block are relative to ``data.root``.
* URLs (``s3://…``, ``memory://…``) and absolute paths are used as given.

:func:`anchor` applies the rule to one path; :func:`anchor_overrides` applies it to the path
values of ``a.b=value`` overrides, which are typed on the command line or in a recipe.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

_SOURCE_KEY = re.compile(r"data\.sources\.\d+\.([A-Za-z_]+)")


def anchor(path: str | os.PathLike | None, base: str | os.PathLike | None = None) -> str | None:
    """``path`` made absolute against ``base`` (the current directory when None).

    ``None`` and ``""`` are returned as they are, and so are URLs and absolute paths.

    Examples
    --------
    >>> anchor("masks", "/data/hpa")
    '/data/hpa/masks'
    >>> anchor("s3://bucket/x", "/data")
    's3://bucket/x'
    """
    if path is None or str(path) == "":
        return None if path is None else ""
    text = os.fspath(path)
    if "://" in text or Path(text).is_absolute():
        return text
    if base is not None and "://" in os.fspath(base):
        return f"{os.fspath(base).rstrip('/')}/{text}"
    return os.path.normpath(os.path.abspath(Path(base or ".") / text))


def path_fields(source_schema: type) -> set[str]:
    """The keys of a data source dataclass that hold paths: its string fields but ``name``."""
    hints = typing.get_type_hints(source_schema)
    return {
        f.name
        for f in dataclasses.fields(source_schema)
        if f.name != "name" and hints[f.name] in (str, str | None)
    }


def anchor_overrides(
    overrides: list[str] | tuple[str, ...], source_schema: type | None = None
) -> list[str]:
    """Overrides with the relative path values of ``data.root`` and of the path keys of
    ``data.sources.N`` (:func:`path_fields` of ``source_schema``) anchored at the cwd.

    A value such as ``data.sources.0.masks=out/masks`` typed on the command line means
    ``./out/masks``, never ``<data.root>/out/masks``.
    """
    paths = path_fields(source_schema) if source_schema is not None else set()
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        key, text = key.strip(), value.strip()
        source = _SOURCE_KEY.fullmatch(key)
        is_path = key == "data.root" or (source is not None and source.group(1) in paths)
        literal = not text or text[0] in "[{~" or text.lower() in ("none", "null")
        if sep and is_path and not literal:
            item = f"{key}={anchor(text)}"
        out.append(item)
    return out
