"""Every progress bar of hpasc: one library (rich), on stderr, so stdout stays for results.

On a terminal the bar is live; elsewhere (logs, pipes, tests) rich draws nothing while it runs and a
transient bar leaves nothing behind. Each bar has its own console, so a bar inside another (a
field's batches inside a runner's fields) works with every rich we allow (before 14, rich raised
LiveError for a second live display on one console).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
# Where every bar draws (Lightning's training bar too: hpasc.train.trainer passes it on).
CONSOLE_KWARGS = {"stderr": True}


def bar(*columns: ProgressColumn, transient: bool = True) -> Progress:
    """A rich ``Progress`` on stderr: the task's description, a bar, then ``columns``.

    Parameters
    ----------
    *columns : rich.progress.ProgressColumn
        What follows the bar; by default done/total, time elapsed and time remaining.
    transient : bool
        Clear the bar when it stops (else its last state stays on the terminal).
    """
    shown = columns or (MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        *shown,
        console=Console(**CONSOLE_KWARGS),
        transient=transient,
    )


def track(
    items: Iterable[T],
    description: str,
    *,
    enabled: bool = True,
    total: int | None = None,
    transient: bool = True,
) -> Iterator[T]:
    """Yield ``items`` while a :func:`bar` counts them (``total``: default ``len(items)`` if any).

    With ``enabled=False``, or when stderr is no terminal, the items pass through and nothing is
    drawn (a stopped transient bar would still leave an empty line in a log).
    """
    if not enabled or not Console(**CONSOLE_KWARGS).is_terminal:
        yield from items
        return
    with bar(transient=transient) as progress:
        yield from progress.track(items, total=total, description=description)


def live_display(get_renderable: Callable[[], Any]) -> Live | None:
    """A live display (e.g. a table of tasks) redrawn from ``get_renderable()`` on stderr, or
    ``None`` when stderr is no terminal (then the caller prints lines instead)."""
    console = Console(**CONSOLE_KWARGS)
    if not console.is_terminal:
        return None
    return Live(console=console, refresh_per_second=2, get_renderable=get_renderable)
