"""CLI command modules: one module per concern, its functions are Typer commands.

``hpasc.cli.COMMANDS`` names every command (group, name, ``module:function``) and imports a
module only when one of its commands runs. This package holds what the command modules share.
"""

from __future__ import annotations

import typer

# Settings of every Typer app of hpasc. Help texts are plain text: they name paths like
# ``x.zip[/sub]`` that rich markup would take for tags (and crash on).
APP_SETTINGS: dict = {
    "no_args_is_help": True,
    "add_completion": False,
    "rich_markup_mode": None,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}


def warn_if_in_memory(*outputs: str | None) -> None:
    """Warn on stderr about ``memory://`` outputs: they vanish when this command ends."""
    for url in outputs:
        if url is not None and str(url).lower().startswith("memory://"):
            typer.echo(
                f"warning: {url} is in this process's memory and disappears when the command "
                "ends; write to a folder, a .zip or a remote URL to keep it",
                err=True,
            )


def report_summary(out: str, summary) -> None:
    """Print a per-field run summary; exit 1 when fields failed (they are listed in OUT/errors.csv)."""
    typer.echo(f"{out}: {summary}")
    if summary.failed:
        typer.echo(f"{summary.failed} field(s) failed; see {out}/errors.csv", err=True)
        raise typer.Exit(1)
