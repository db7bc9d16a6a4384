"""One clear error line and exit code 2, never a traceback: how every command fails."""
from __future__ import annotations

import sys

import click


def fail(exc: Exception) -> None:
    if isinstance(exc, click.ClickException):
        raise exc
    kind = type(exc).__name__
    click.echo(f"specgrove: error: {exc} ({kind})", err=True)
    sys.exit(2)

