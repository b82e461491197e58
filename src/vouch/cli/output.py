"""How results reach the user: tables, JSON, progress.

Tables have notary's columns. On a terminal they are drawn with rich; in a
pipe they are laid out exactly as notary's ``tabwriter`` lays them out
(header, dashes, columns padded to width + 4, the last one unpadded), so a
script that parses ``notary list`` output parses ``vouch list`` output too.
``--json`` prints documented, stable shapes instead (docs/client.md).
Progress bars and spinners appear only when stdout is a terminal.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from typing import Any, TypeVar

import click

T = TypeVar("T")

PADDING = 4  # notary's tabwriter: minwidth 4, padding 4
UNLIMITED = 1 << 16


def stdout_is_tty() -> bool:
    return sys.stdout.isatty()


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def plain_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``rows`` under ``columns`` as notary's ``initTabWriter`` prints them."""
    lines = [columns, ["-" * len(c) for c in columns], *rows]
    widths = [max(map(len, column)) + PADDING for column in list(zip(*lines, strict=True))[:-1]]
    out = ["".join([*map(str.ljust, line, widths), line[-1]]) for line in lines]
    return "\n".join(out) + "\n"


def print_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if not stdout_is_tty():
        click.echo(plain_table(columns, rows), nl=False)
        return
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for row in rows:
        table.add_row(*row)
    # Never fold or cut a digest or key ID (people copy them): a table wider than
    # the terminal is left to the terminal to wrap.
    Console(highlight=False, width=UNLIMITED).print(table)


def progress(items: Sequence[T], description: str) -> Iterator[T]:
    """``items``, with a progress bar on a terminal when there are a few of them."""
    if not stdout_is_tty() or len(items) < 2:
        yield from items
        return
    from rich.progress import track

    yield from track(items, description=description, transient=True)


@contextlib.contextmanager
def busy(message: str) -> Iterator[None]:
    """A spinner for a step of unknown length (a publish), on a terminal only."""
    if not stdout_is_tty():
        yield
        return
    from rich.console import Console

    with Console().status(message):
        yield


def write_bytes(data: bytes) -> None:
    """Raw bytes to stdout (verified content, key bundles)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def read_stdin() -> bytes:
    return sys.stdin.buffer.read()
