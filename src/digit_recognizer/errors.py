"""Errors a user can fix. The CLI prints them as one line and exits non-zero; others are bugs.
And SIGTERM, which stops a command as Ctrl-C does (``sigterm_interrupts``)."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


class DigitsError(Exception):
    """Base class: the message says where, what was expected, what was found, and the fix."""


class DataError(DigitsError):
    """A data file is missing, corrupt or malformed (the message names file, line and column)."""


class ConfigError(DigitsError):
    """A configuration key or value is invalid."""


class UnknownModelError(DigitsError):
    """A model name is not in the registry."""


class OutputError(DigitsError):
    """An output file cannot be written where it was asked for (a directory, no permission)."""


class ModelFileError(DigitsError):
    """A saved model or run directory is missing, incomplete or corrupt."""


def first_line(error: BaseException) -> str:
    """An exception's message on one line, up to 200 characters (torch's run to pages), to
    quote inside one of ours; its type where it has none."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a job scheduler), raised as Ctrl-C's KeyboardInterrupt so
    that work stops as it does on Ctrl-C, cleaning up after itself. Unlike Ctrl-C in a
    terminal, it reached this process alone, not the processes it started."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (in the main thread only, where Python
    runs signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(f"signal {signum}")
