"""SIGTERM (`kill`, `timeout`, a job scheduler) stops a command as Ctrl-C does: work in progress
is cleaned up (a temporary file, a half-built shard folder) and the processes the command started
are stopped too, rather than left running as orphans.

Python runs a signal's handler between bytecodes, so a native call in progress (an SVM's fit, a
long BLAS or pyarrow call) finishes first; a scheduler's SIGKILL after its grace period still
ends it at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


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
