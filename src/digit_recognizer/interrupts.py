"""SIGTERM (`kill`, `timeout`, a job scheduler) and SIGHUP (the terminal or ssh session closed)
stop a command as Ctrl-C does: work in progress is cleaned up (a temporary file, a half-built
shard folder) and the processes the command started are stopped too, rather than left running as
orphans.

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
    """SIGTERM or SIGHUP, raised as Ctrl-C's KeyboardInterrupt so that work stops as it does on
    Ctrl-C, cleaning up after itself. Unlike Ctrl-C in a terminal, SIGTERM reached this process
    alone, not the processes it started."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` (in the main thread only,
    where Python runs signal handlers). A signal ignored stays ignored: `nohup` ignores SIGHUP,
    and a parent that ignores SIGTERM for its children says so."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, _raise_terminated)
        for signum in (signal.SIGTERM, signal.SIGHUP)
        if signal.getsignal(signum) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interruption_behind(
    error: BaseException, outer: BaseException | None = None
) -> KeyboardInterrupt | None:
    """The interruption ``error`` was raised while handling, if any: the cleanup after Ctrl-C
    or SIGHUP can fail in turn (a progress bar written to a closed terminal, Optuna's
    bookkeeping cut short), and that failure must not hide that the command was stopped. The
    search stops at ``outer``, what the caller's callers were handling when it began (not this
    call's), and at a loop of contexts (made by hand: Python's own chaining cuts them)."""
    seen = set()
    context = error.__context__
    while context is not None and context is not outer and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return context
        seen.add(id(context))
        context = context.__context__
    return None


def _raise_terminated(signum: int, _frame: object) -> None:
    raise Terminated(signum)
