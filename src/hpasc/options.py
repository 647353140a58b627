"""Typed stage options: one frozen dataclass per stage holds its parameters, defaults, ranges
and choices, and validates them.

Each field is declared with :func:`option`; everything else is derived from that declaration:
the library function takes the object, the CLI command builds its flags and ``--help`` text
from the fields (:mod:`hpasc.commands._options`), a recipe step kind loads the object from its
YAML keys (:func:`from_mapping`) and an output set records :func:`recorded` to know how it was
made. Changing a default is therefore a one-line change.

Examples
--------
>>> @dataclasses.dataclass(frozen=True, kw_only=True)
... class Demo:
...     size: int = option(64, "Side S.", min=1)
...     mode: str = option("a", "Mode.", choices=("a", "b"))
...
...     def __post_init__(self) -> None:
...         validate(self)
>>> from_mapping(Demo, {"size": "32"}, "step 'x'")
Demo(size=32, mode='a')
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpasc.errors import ConfigError, HpascError, OptionError

#: the default of an option that has none: the caller must give it
REQUIRED: Any = dataclasses.MISSING
_KEY = "hpasc"


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """What :func:`option` records about a field beyond its type and default."""

    help: str
    choices: tuple[Any, ...] | Callable[[], Sequence[Any]] | None = None
    min: float | None = None
    max: float | None = None
    path: bool = False  # an input path: anchored at the current directory and fingerprinted
    output: bool = False  # an output path: anchored, never fingerprinted as an input
    records: bool = True  # shapes the outputs: recorded in the output set's manifest
    flag: str | None = None  # the CLI flag, when not ``--field-name``


def option(
    default: Any,
    help: str,
    *,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    min: float | None = None,
    max: float | None = None,
    path: bool = False,
    output: bool = False,
    records: bool = True,
    flag: str | None = None,
) -> Any:
    """A dataclass field declaring one option of a stage.

    Parameters
    ----------
    default : the value when not given (:data:`REQUIRED`: none, the caller must give it);
        a list or dict default is copied per instance.
    help : one sentence for ``--help`` and the docs.
    choices : the allowed values, or a function giving them (a registry that may grow).
    min, max : the allowed range (inclusive).
    path, output : the value is an input / output path (recipes anchor these).
    records : the value shapes the stage's outputs (:func:`recorded`); ``False`` for the
        number of workers, progress bars and the like.
    flag : the CLI flag (default ``--`` + the field name with ``-`` for ``_``).
    """
    spec = OptionSpec(
        help,
        tuple(choices) if choices is not None and not callable(choices) else choices,
        min,
        max,
        path,
        output,
        records,
        flag,
    )
    metadata = {_KEY: spec}
    if isinstance(default, list | dict):
        # mutable defaults need a factory; copied so instances never share one
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def spec_of(field: dataclasses.Field) -> OptionSpec:
    """The :class:`OptionSpec` of a field (a plain field gets an empty one)."""
    return field.metadata.get(_KEY) or OptionSpec("")


def fields(cls_or_obj: Any) -> list[tuple[dataclasses.Field, OptionSpec]]:
    """The options of an options class or object, in declaration order."""
    return [(f, spec_of(f)) for f in dataclasses.fields(cls_or_obj)]


def default_of(field: dataclasses.Field) -> Any:
    """A field's default value (:data:`REQUIRED` when it has none)."""
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return REQUIRED


def flag_of(field: dataclasses.Field) -> str:
    """The CLI flag of a field: ``flag=`` or ``--`` + its name with dashes."""
    return (spec_of(field).flag or "--" + field.name.replace("_", "-")).split()[0]


def choices_of(spec: OptionSpec) -> tuple[Any, ...] | None:
    """The allowed values of an option now (None: any)."""
    return tuple(spec.choices()) if callable(spec.choices) else spec.choices


def validate(obj: Any, error: type[Exception] = OptionError) -> None:
    """Check every option of ``obj`` against its choices and range.

    Call it from the options class's ``__post_init__``. Raises ``error`` (by default
    :class:`~hpasc.errors.OptionError`, a user error and a ``ValueError``) naming the key and
    its CLI flag, the value and what is allowed.
    """
    for field, spec in fields(obj):
        value = getattr(obj, field.name)
        if value is None:
            continue
        values = value if isinstance(value, list | tuple) else [value]
        choices = choices_of(spec)
        for v in values:
            if choices is not None and v not in choices:
                allowed = ", ".join(map(str, choices))
                raise error(
                    f"{flag_of(field)} must be one of {allowed}, got {v!r} (key {field.name})"
                )
            low_ok = spec.min is None or v >= spec.min
            high_ok = spec.max is None or v <= spec.max
            if not (low_ok and high_ok):
                raise error(
                    f"{flag_of(field)} must be {_range(spec)}, got {v!r} (key {field.name})"
                )


def _range(spec: OptionSpec) -> str:
    if spec.max is None:
        return f">= {spec.min}"
    if spec.min is None:
        return f"<= {spec.max}"
    return f"in [{spec.min}, {spec.max}]"


def unknown_keys(keys: Sequence[str], allowed: Sequence[str], where: str) -> None:
    """Raise :class:`ConfigError` for the first key not in ``allowed``, naming the closest."""
    for key in keys:
        if key not in allowed:
            close = difflib.get_close_matches(key, sorted(allowed), n=2)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"{where}: unknown key '{key}'{hint} (keys: {', '.join(sorted(allowed))})"
            )


def from_mapping(cls: type, params: Mapping[str, Any], where: str) -> Any:
    """Load an options object from a mapping (a recipe step's keys, a YAML section).

    The mapping is merged into ``OmegaConf.structured(cls)``, so an unknown key, a missing
    required key or a value of the wrong type fails in one line naming ``where`` and the key;
    values convert as OmegaConf converts them (``"5"`` for an ``int`` field is 5). The object
    is then built (and validated) by the class itself.
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown_keys(list(params), names, where)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if default_of(f) is REQUIRED and f.name not in params
    ]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {missing}")
    try:
        schema = OmegaConf.structured(cls)
        # a frozen dataclass gives a read-only schema; merging returns a new config from it
        OmegaConf.set_readonly(schema, False)
        merged = OmegaConf.merge(schema, dict(params))
        values = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{where}: key '{key}': {message}") from None
    try:
        return cls(**values)
    except HpascError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def recorded(obj: Any) -> dict[str, Any]:
    """The options that shape a stage's outputs (``records=True``), by field name: what an
    output set records (:func:`hpasc.runner.guard_output`)."""
    return {f.name: getattr(obj, f.name) for f, spec in fields(obj) if spec.records}


def path_keys(cls: type) -> tuple[frozenset[str], frozenset[str]]:
    """The fields of ``cls`` marked ``path=True`` and those marked ``output=True``."""
    pairs = fields(cls)
    return (
        frozenset(f.name for f, s in pairs if s.path),
        frozenset(f.name for f, s in pairs if s.output),
    )


def field_type(cls: type, name: str) -> Any:
    """The resolved annotation of field ``name`` of ``cls`` (string annotations evaluated)."""
    return typing.get_type_hints(cls)[name]


def merged(cls: type, options: Any, overrides: Mapping[str, Any]) -> Any:
    """``options`` (``None``: the defaults of ``cls``) with keyword ``overrides`` applied: the
    keyword form of a stage function (``resize_set(a, b, size=64)``) next to its options form."""
    if options is None:
        return cls(**overrides)
    return dataclasses.replace(options, **overrides) if overrides else options
