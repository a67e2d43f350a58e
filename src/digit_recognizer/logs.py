"""Where the commands' progress log goes: rich's columns on a terminal, plain lines elsewhere."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import IO

from rich.console import Console
from rich.logging import RichHandler


def log_handler(console: Console, message_format: str = "%(message)s") -> logging.Handler:
    """A handler writing to ``console``'s stream. In a pipe, a file or a CI job's log each
    record is one line, its level in front: rich wraps and pads records to the console's width
    (80 columns where there is no terminal), which would split a path or a figure across lines
    that grep and other programs then miss."""
    # A terminal's, not rich's is_terminal: FORCE_COLOR (set by many CI systems) makes that true
    # in a pipe too, and would bring the wrapping back.
    if _is_a_terminal(console.file):
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter(message_format))
        return handler
    handler = _ConsoleLines(console)
    handler.setFormatter(logging.Formatter(f"%(levelname)-8s {message_format}"))
    return handler


class _ConsoleLines(logging.StreamHandler):
    """Records as lines on the console's stream as it is when each is written, as rich's handler
    writes them: stderr may have been swapped since (a test's runner, which then closes its
    own), and a record written to the old one would fail with a traceback."""

    def __init__(self, console: Console) -> None:
        super().__init__(console.file)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = self.console.file  # emit runs under the handler's lock
        super().emit(record)


def _is_a_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no stream (stderr closed), or a closed one
        return False


@contextlib.contextmanager
def hushed(logger_name: str = "digit_recognizer") -> Iterator[None]:
    """The warnings and notes of ``logger_name`` (the package's, or one module's) hushed in the
    block, whose messages an earlier step gave: an ensemble's members after the first read the
    rows the first read and warned of (faint rows, digits lacking, a large last shard), which
    each member would otherwise say again."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
