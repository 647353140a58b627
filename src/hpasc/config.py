"""Typed configurations: dataclass schemas + OmegaConf, YAML files and ``a.b=value`` overrides.

Every config in hpasc is a dataclass. :func:`load_config` reads a YAML file into it, applies
command-line overrides converted to each field's type, and rejects unknown keys with the closest
valid names. :func:`to_yaml` gives the resolved config back as YAML (runs keep it:
:func:`hpasc.io.runs.dump_config`).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpasc.errors import ConfigError

T = TypeVar("T")

_NONE_WORDS = {"none", "null", "~"}


def _field_types(schema: type) -> dict[str, Any]:
    hints = typing.get_type_hints(schema)
    return {f.name: hints[f.name] for f in dataclasses.fields(schema)}


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X``, ``X | None``, ``Optional[X]``), if any."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _unknown_key(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key.split(".")[-1], valid, n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    listing = ", ".join(sorted(valid))
    return ConfigError(f"unknown config key '{key}'{where}{hint} (valid here: {listing})")


def check_keys(schema: type, data: Any, prefix: str = "", where: str = "") -> None:
    """Raise :class:`ConfigError` for any key of ``data`` that ``schema`` does not define."""
    if not isinstance(data, dict):
        return
    types = _field_types(schema)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in types:
            raise _unknown_key(path, list(types), where)
        sub = _dataclass_of(types[key])
        if sub is not None:
            check_keys(sub, value, prefix=f"{path}.", where=where)


def _resolve_path(schema: type, dotted: str) -> Any:
    """Check that ``dotted`` names a field of ``schema`` (nested dataclasses, list indices).

    Returns the field's type (``Any`` inside free-form mappings)."""
    current: type | None = schema
    parts = dotted.split(".")
    i = 0
    while i < len(parts):
        part = parts[i]
        if current is None:
            return Any  # inside a free-form mapping: anything goes
        types = _field_types(current)
        if part not in types:
            raise _unknown_key(".".join(parts[: i + 1]), list(types), " in override")
        tp = types[part]
        if _is_list(tp) and i + 1 < len(parts):
            if not parts[i + 1].isdigit():
                raise ConfigError(
                    f"config key '{'.'.join(parts[: i + 2])}': '{part}' is a list, index it by number"
                )
            i += 1  # the index; OmegaConf checks it is in range
        sub = _dataclass_of(tp)
        if sub is None and i < len(parts) - 1:
            # a mapping field (e.g. transform kwargs) accepts nested keys
            if not _is_mapping(tp) and tp is not Any:
                raise ConfigError(f"config key '{'.'.join(parts[: i + 1])}' has no sub-keys")
            return Any
        if i == len(parts) - 1:
            return tp
        current = sub
        i += 1
    return Any


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(a) is list or a is list for a in (tp, *typing.get_args(tp)))


def _is_mapping(tp: Any) -> bool:
    return any(typing.get_origin(a) is dict or a is dict for a in (tp, *typing.get_args(tp)))


def parse_value(text: str) -> Any:
    """Parse an override value: YAML scalars and lists; ``None``/``null``/``~`` mean None."""
    if text.strip().lower() in _NONE_WORDS:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Split ``a.b=value`` strings (only on the first ``=``: values may contain ``=``)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' is not of the form key=value (e.g. optim.lr=0.001)"
            )
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        out.append((key, parse_value(value)))
    return out


def from_dict(
    schema: type[T], data: dict[str, Any] | None, overrides: list[str] = (), source: str = ""
) -> T:
    """Build a ``schema`` instance from a plain dict plus ``a.b=value`` overrides."""
    where = f" in {source}" if source else ""
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config{where} must be a mapping of keys to values, got {type(data).__name__}"
        )
    check_keys(schema, data, where=where)
    try:
        cfg: DictConfig = OmegaConf.structured(schema)
        cfg = OmegaConf.merge(cfg, OmegaConf.create(data))
    except OmegaConfBaseException as exc:
        raise _bad_value(exc, f"bad config value{where}") from exc
    for (key, value), raw in zip(parse_overrides(list(overrides)), overrides, strict=True):
        tp = _resolve_path(schema, key)
        if value is None and tp is str:  # "none" is a legal value of a plain string option
            value = raw.split("=", 1)[1]
        try:
            OmegaConf.update(cfg, key, value, merge=False)
        except OmegaConfBaseException as exc:
            # the override, not the file, holds the bad value: name it as typed
            raise _bad_value(exc, f"override '{raw}'") from exc
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        raise _bad_value(exc, f"bad config value{where}") from exc


def _bad_value(exc: OmegaConfBaseException, what: str) -> ConfigError:
    msg = str(exc).splitlines()[0]
    key = getattr(exc, "full_key", None)
    return ConfigError(f"{what}" + (f" for '{key}'" if key else "") + f": {msg}")


def load_config(schema: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load a YAML file (or only defaults when ``path`` is None) into ``schema``, then apply overrides.

    Examples
    --------
    >>> cfg = load_config(TrainConfig, "configs/image-level/tiny.yaml", ["optim.lr=3e-4"])
    """
    if path is None:
        return from_dict(schema, {}, overrides)
    return from_dict(schema, read_yaml(path, "config file"), overrides, source=str(path))


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """A YAML document; a missing or malformed file is a :class:`ConfigError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise yaml_error(path, exc) from exc


def yaml_error(path: str | Path, exc: yaml.YAMLError) -> ConfigError:
    """A :class:`ConfigError` naming the file, line and column of a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{path}: not valid YAML{at}: {detail}; fix the file")


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain Python types (for YAML, JSON, fingerprints)."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # type: ignore[return-value]


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def config_search_path() -> list[Path]:
    """Folders where shipped configs and recipes are looked up (``image-level/b2-768.yaml``, ...)."""
    here = Path(__file__).resolve().parent
    found: list[Path] = []
    for d in (here / "configs", here.parents[1] / "configs"):  # installed package, source checkout
        if d.is_dir() and d.resolve() not in [f.resolve() for f in found]:
            found.append(d)
    return found


def check_range(
    value: float | None,
    key: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    optional: bool = False,
) -> None:
    """:class:`ConfigError` naming ``key`` and the valid range unless ``low <= value <= high``.

    ``low_open`` excludes ``low`` itself; ``optional`` lets None through.
    """
    if value is None and optional:
        return
    below = value is not None and low is not None and (value <= low if low_open else value < low)
    above = value is not None and high is not None and value > high
    if value is None or below or above:
        if low is not None and high is not None:
            valid = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            valid = f"{'>' if low_open else '>='} {low:g}"
        else:
            valid = f"<= {high:g}"
        none = " or null" if optional else ""
        raise ConfigError(f"{key}: {value} is out of range; valid: {valid}{none}")


def check_ranges(cfg: Any, prefix: str, ranges: dict[str, tuple]) -> None:
    """:func:`check_range` for each ``field: (low, high[, options])`` of ``ranges`` on ``cfg``."""
    for name, spec in ranges.items():
        low, high, *rest = spec
        check_range(getattr(cfg, name), f"{prefix}.{name}", low, high, **(rest[0] if rest else {}))
