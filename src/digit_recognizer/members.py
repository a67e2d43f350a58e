"""Ensemble members side by side (`digits run --preset best --jobs 5`), each in a process of
its own: started deaf to Ctrl-C until they train, heard over a pipe as they go, named the moment
one fails, and stopped as Ctrl-C stops a run, each keeping its last finished epoch.

pipeline.train_side_by_side says what a member trains and on which threads and GPU; figures:
docs/results.md, 'Members side by side'.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import connection
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from digit_recognizer.errors import DigitsError, first_line
from digit_recognizer.interrupts import stop_signals_interrupt

log = logging.getLogger(__name__)


def run_side_by_side(
    train: Callable[..., Any], members: list[tuple[Any, ...]], parallel: int
) -> list[Any]:
    """``train(number, *arguments)`` for each member's arguments (numbered from 1),
    ``parallel`` at a time, each in a fresh process: their results, in order.

    A member starts only when a process is free for it, and none after one fails; the others
    go on to their end, and a ``DigitsError`` then names each failure. Ctrl-C or SIGTERM stops
    them all (``stop_members``). ``train`` must be importable by name: a spawned process
    imports it anew.
    """
    # spawn: a forked child cannot use CUDA once its parent has. One fresh process per member
    # frees the member's memory when it ends and gives its log lines their own prefix.
    context = multiprocessing.get_context("spawn")
    waiting = list(enumerate(members, start=1))
    running: dict[int, Member] = {}
    results: dict[int, Any] = {}
    failures: list[str] = []
    try:
        with stop_signals_interrupt():
            while running or (waiting and not failures):
                while waiting and not failures and len(running) < parallel:
                    number, arguments = waiting.pop(0)
                    start_member(running, context, train, number, *arguments)
                # Messages are read as they come (a result larger than the pipe's buffer would
                # hold its process up), and each process's end is seen the moment it comes.
                watched = [member.process.sentinel for member in running.values()]
                watched += [member.results for member in running.values() if not member.ended]
                ready = set(connection.wait(watched))
                for number, member in list(running.items()):
                    if member.results in ready:
                        member.read()
                    if member.process.sentinel not in ready:
                        continue
                    member.process.join()
                    while not member.ended:  # what it sent before it ended, to the end
                        member.read()
                    member.results.close()
                    del running[number]
                    if member.succeeded:
                        results[number] = member.outcome
                        continue
                    failures.append(member_failure(number, member.outcome,
                                                   member.process.exitcode))  # fmt: skip
                    log.error("%s%s", failures[-1], "; the members training go on to their end, "
                              "and no other starts" if running else "")  # fmt: skip
    except BaseException:  # Ctrl-C, SIGTERM: the members stop too, rather than train as orphans
        stop_members(list(running.values()))
        raise
    if failures:
        raise DigitsError(f"{'; '.join(failures)}; the same command with --resume finishes the "
                          "ensemble, each member from its last finished epoch")  # fmt: skip
    return [result for _, result in sorted(results.items())]


TRAINING = "training"  # what a member's process says once Ctrl-C would stop it cleanly


@dataclass
class Member:
    """An ensemble member's process and the pipe it reports on: TRAINING, then (True, its
    result) or (False, what went wrong in a line); nothing where it was killed."""

    process: BaseProcess
    results: Connection
    interruptible: bool = True  # hears Ctrl-C once it trains (its command did)
    training: bool = False
    ended: bool = False
    succeeded: bool = False
    outcome: Any = None  # the result, or the line saying what went wrong

    def read(self) -> None:
        try:
            message = self.results.recv()
        except EOFError:  # ended without a word: killed
            self.ended = True
            return
        if message == TRAINING:
            self.training = True
        else:
            (self.succeeded, self.outcome), self.ended = message, True


def start_member(
    running: dict[int, Member],
    context: BaseContext,
    train: Callable[..., Any],
    number: int,
    *args: Any,
) -> None:
    """Start member ``number``'s process, running ``train(number, *args)``, into ``running``."""
    results, sender = context.Pipe(duplex=False)
    interruptible = signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    process = context.Process(
        target=_run_member, args=(train, number, *args, sender, os.getpid(), interruptible),
        name=f"member-{number}",
    )  # fmt: skip
    # Started ignoring Ctrl-C (a spawned process keeps an ignored signal ignored): one while it
    # imports would end it in a traceback. It takes Ctrl-C again once it trains (_run_member).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        process.start()
        running[number] = Member(process, results, interruptible)
    finally:
        signal.signal(signal.SIGINT, previous)
    sender.close()


def _run_member(train: Callable[..., Any], number: int, *args: Any) -> None:
    """In a member's process: ``train(number, *args)``, and what came of it sent back on the
    pipe (the arguments end with the pipe, the parent's pid and whether Ctrl-C may stop it)."""
    *args, results, parent, interruptible = args
    _end_with(parent)
    try:
        if interruptible:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        results.send(TRAINING)
        # SIGTERM (its command's death, or stop_members for a member deaf to Ctrl-C) stops it
        # as Ctrl-C does: by default it ends the process where it stands, temporary files and
        # all.
        with stop_signals_interrupt():
            outcome: tuple[bool, Any] = (True, train(number, *args))
    except KeyboardInterrupt:
        outcome = (False, "it was interrupted")
    except DigitsError as error:
        outcome = (False, str(error))
    except Exception as error:  # a bug, or memory: its traceback once, here, and a line there
        traceback.print_exc()
        outcome = (False, f"{type(error).__name__}: {first_line(error)}")
    with contextlib.suppress(OSError):  # its command is gone (killed): no one to tell
        results.send(outcome)
    results.close()


def _end_with(parent: int) -> None:
    """SIGTERM this process when ``parent`` dies (Linux): a member whose command was killed
    would otherwise train on as an orphan, outside the ensemble's lock. Its last finished
    epoch stays, as on Ctrl-C."""
    if sys.platform != "linux":
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request took hold
        os._exit(1)


def member_failure(number: int, outcome: str | None, exit_code: int | None) -> str:
    """What went wrong with member ``number``, in a line."""
    if outcome is not None:
        return f"ensemble member {number}: {outcome}"
    if exit_code is not None and exit_code < 0:
        try:
            name = signal.Signals(-exit_code).name
        except ValueError:  # a real-time signal
            name = f"signal {-exit_code}"
        # The system's out-of-memory killer sends SIGKILL; other signals are someone's.
        how = f"killed by {name}" + (" (by the system for memory, say)" * (name == "SIGKILL"))
    else:
        how = f"ended with exit status {exit_code}"
    return f"ensemble member {number}'s process {how} before it finished"


def stop_members(members: list[Member]) -> None:
    """Stop members' processes as Ctrl-C does, each keeping its last finished epoch; one not
    yet training (still importing, deaf to Ctrl-C) has nothing to keep and is killed. A
    terminal's Ctrl-C reached the others already: they get two seconds to end on their own
    before a SIGINT of their own (a second one could break into their stopping), or a SIGTERM
    where their command was started deaf to Ctrl-C, as they are."""
    for member in members:
        while not member.ended and member.results.poll():
            member.read()
        if not member.training:
            member.process.kill()
    deadline = time.monotonic() + 2
    for member in members:
        member.process.join(max(0.0, deadline - time.monotonic()))
    for member in members:
        if member.process.is_alive():
            stop = signal.SIGINT if member.interruptible else signal.SIGTERM
            os.kill(member.process.pid, stop)
    deadline = time.monotonic() + 30
    for member in members:
        member.process.join(max(0.0, deadline - time.monotonic()))
        if member.process.is_alive():
            member.process.kill()


def visible_gpus() -> list[str]:
    """The CUDA GPUs this process may use, named as ``CUDA_VISIBLE_DEVICES`` names them."""
    if not torch.cuda.is_available():
        return []
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(index) for index in range(count)]
    return [name.strip() for name in listed.split(",")][:count]


def member_gpu(number: int, gpus: list[str]) -> str | None:
    """The GPU ensemble member ``number`` (from 1) trains on: the n-th, round ``gpus``; None,
    leaving the member every GPU there is, when there are fewer than two to share out."""
    return gpus[(number - 1) % len(gpus)] if len(gpus) > 1 else None
