"""Typer commands derived from a stage's options class (:mod:`hpasc.options`).

:func:`with_options` turns a command body that takes ``options: X`` (besides its own
arguments: input and output paths, run controls) into a Typer command whose flags are X's
fields: flag names from the field names (or ``flag=``), ``--help`` text from ``help``, defaults
shown, choices as a click choice, ``[min, max]`` as a click range (so a usage error keeps the
one-line ``(valid: [lo, hi])`` form of :mod:`hpasc.cli`). A list field takes comma-separated
values (``--weights 1,1,2``). The command stays a plain module-level callable.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import typer

from hpasc.errors import InputError
from hpasc.options import (
    REQUIRED,
    choices_of,
    default_of,
    field_type,
    fields,
    flag_of,
    spec_of,
)

# The run controls of the per-field data verbs (resize, segment, crop): how a run goes, not
# what it makes, so they are the commands' own parameters rather than stage options.
SHARD = typer.Option(
    None, "--shard", help="Process only shard i of n (0-based, e.g. 0/4): sorted ids i, i+n, ..."
)
OVERWRITE = typer.Option(
    False, "--overwrite", help="Redo fields whose outputs exist (default: skip them, i.e. resume)."
)
ON_ERROR = typer.Option(
    "stop",
    "--on-error",
    help="stop: the first failing field stops the run; skip: log it to OUT/errors.csv, go on.",
)


def _optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → (X, True); anything else → (tp, False)."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_optional(tp)[0]) is list


def _cli_annotation(cls: type, field: dataclasses.Field) -> Any:
    tp = field_type(cls, field.name)
    base, optional = _optional(tp)
    spec = spec_of(field)
    if typing.get_origin(base) is list:
        base = str  # comma-separated on the command line
    elif choices_of(spec) is not None:
        base = Literal[choices_of(spec)]  # typer makes a click Choice of a Literal
    return base | None if optional else base


def _cli_parameter(cls: type, field: dataclasses.Field) -> inspect.Parameter:
    spec = spec_of(field)
    default = default_of(field)
    decls = (spec.flag or flag_of(field)).split()
    tp = _optional(field_type(cls, field.name))[0]
    if tp is bool and spec.flag is None:
        decls = [f"{decls[0]}/--no-{decls[0][2:]}"]
    if _is_list(field_type(cls, field.name)) and default is not None and default is not REQUIRED:
        default = ",".join(map(str, default))
    info = typer.Option(
        ... if default is REQUIRED else default,
        *decls,
        help=spec.help,
        min=spec.min,
        max=spec.max,
        show_default=default is not None,
    )
    return inspect.Parameter(
        field.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=info,
        annotation=_cli_annotation(cls, field),
    )


def _parse_list(cls: type, field: dataclasses.Field, text: str | None) -> list | None:
    if text is None:
        return None
    item = typing.get_args(_optional(field_type(cls, field.name))[0])[0]
    try:
        return [item(v) for v in str(text).split(",")]
    except ValueError:
        raise InputError(
            f"{flag_of(field)} {text!r}: expected comma-separated {item.__name__} values, e.g. 1,1,2"
        ) from None


def _is_options_class(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def with_options(
    *, exclude: dict[str, tuple[str, ...]] | None = None
) -> Callable[[Callable], Callable]:
    """Derive a Typer command from a body whose keyword-only parameters annotated with an
    options class (``options: SubmitOptions``) are filled from flags.

    The command's parameters are the body's own (the others: input and output paths, run
    controls) followed by one option per field of each options class, but the fields named in
    ``exclude[parameter]`` (fields the command fills itself). Calling the command builds each
    options object (validated by its class) and calls the body with it.
    """
    exclude = exclude or {}

    def deco(fn: Callable) -> Callable:
        sig = inspect.signature(fn, eval_str=True)
        groups = {
            name: p.annotation
            for name, p in sig.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and _is_options_class(p.annotation)
        }
        own = [p for name, p in sig.parameters.items() if name not in groups]
        chosen = {
            name: [f for f, _ in fields(cls) if f.name not in exclude.get(name, ())]
            for name, cls in groups.items()
        }
        taken = {p.name for p in own}
        for name, cls in groups.items():
            clash = taken.intersection(f.name for f in chosen[name])
            if clash:
                raise TypeError(
                    f"{fn.__name__}: parameters {sorted(clash)} clash in {cls.__name__}"
                )
            taken.update(f.name for f in chosen[name])
        params = [p.replace(kind=inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in own]
        params += [_cli_parameter(groups[n], f) for n, group in chosen.items() for f in group]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> Any:
            built = {}
            for name, cls in groups.items():
                values = {}
                for f in chosen[name]:
                    value = kwargs.pop(f.name)
                    is_list = _is_list(field_type(cls, f.name))
                    values[f.name] = _parse_list(cls, f, value) if is_list else value
                built[name] = cls(**values)
            return fn(**kwargs, **built)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        command.__annotations__["return"] = sig.return_annotation
        del command.__wrapped__  # typer must read the derived signature, not the body's
        command.options_classes = groups  # type: ignore[attr-defined]
        return command

    return deco
