"""Members side by side, each in a process of its own: started deaf to Ctrl-C until they
train, named when they fail, stopped as Ctrl-C stops a run (pipeline's tests train them)."""

import multiprocessing
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from digit_recognizer.fileio import atomic_path
from digit_recognizer.members import (
    Member,
    member_failure,
    member_gpu,
    start_member,
    stop_members,
    visible_gpus,
)


def sleeping_member(number: int, *args: object) -> object:
    time.sleep(120)
    raise AssertionError("stopped before this")


def deaf_importer(deaf: multiprocessing.synchronize.Event) -> None:
    """A member's process still importing: deaf to Ctrl-C, and not yet saying it trains."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    deaf.set()
    time.sleep(120)


def test_a_member_not_training_yet_is_killed_at_once_when_the_command_stops():
    """One still importing ignores Ctrl-C: it had been waited on for 30 s, then killed."""
    context = multiprocessing.get_context("spawn")
    results, silent = context.Pipe(duplex=False)
    deaf = context.Event()
    process = context.Process(target=deaf_importer, args=(deaf,))
    process.start()
    assert deaf.wait(60)
    started = time.monotonic()
    stop_members([Member(process, results)])
    assert not process.is_alive() and time.monotonic() - started < 5
    silent.close()


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_member_ends_when_its_command_is_killed(tmp_path):
    """SIGKILL to the command: its members had trained on as orphans, outside its lock."""
    script = (
        "import multiprocessing, sys, time\n"
        "from digit_recognizer.members import TRAINING, start_member\n"
        "from tests.test_members import sleeping_member\n"
        "if __name__ == '__main__':\n"
        "    running = {}\n"
        "    start_member(running, multiprocessing.get_context('spawn'), "
        "sleeping_member, 1)\n"
        "    assert running[1].results.recv() == TRAINING\n"  # killed as it trains
        "    print(running[1].process.pid, flush=True)\n"
        "    time.sleep(120)\n"
    )
    command = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).parents[1])  # fmt: skip
    member_pid = int(command.stdout.readline())
    command.kill()
    command.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(member_pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(member_pid, signal.SIGKILL)
    raise AssertionError("the member outlived its command by 20 s")


def test_a_member_ended_by_a_real_time_signal_or_an_exit_status_is_named():
    assert member_failure(2, None, -40) == (
        "ensemble member 2's process killed by signal 40 before it finished"
    )
    assert "SIGTERM before" in member_failure(2, None, -signal.SIGTERM)  # someone's
    assert member_failure(3, None, 1) == (
        "ensemble member 3's process ended with exit status 1 before it finished"
    )


def reporting_member(number: int, *args: object) -> str:
    return "deaf" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "stops"


def test_a_member_stays_deaf_to_ctrl_c_where_its_command_is():
    """A command started deaf to Ctrl-C (`digits ... &` in a script) keeps its members deaf;
    one that hears it has members that hear it once they train."""
    context = multiprocessing.get_context("spawn")
    outcomes = []
    for handler in (signal.default_int_handler, signal.SIG_IGN):
        previous = signal.signal(signal.SIGINT, handler)
        try:
            running: dict[int, Member] = {}
            start_member(running, context, reporting_member, 1)
        finally:
            signal.signal(signal.SIGINT, previous)
        member = running[1]
        while not member.ended:
            member.read()
        member.process.join(60)
        outcomes.append(member.outcome)
    assert outcomes == ["stops", "deaf"]


def test_a_deaf_commands_members_are_stopped_by_sigterm_not_waited_on():
    """Started deaf to Ctrl-C, a member ignores the SIGINT that stops the others: it had been
    waited on for 30 s, then killed. SIGTERM stops it as Ctrl-C stops the others: it ends on
    its own, having said so."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        running: dict[int, Member] = {}
        start_member(running, multiprocessing.get_context("spawn"), sleeping_member, 1)
    finally:
        signal.signal(signal.SIGINT, previous)
    member = running[1]
    member.read()
    assert member.training
    started = time.monotonic()
    stop_members([member])
    assert member.process.exitcode == 0 and time.monotonic() - started < 10
    while not member.ended:
        member.read()
    assert member.outcome == "it was interrupted"


def writing_member(number: int, folder: str) -> None:
    with atomic_path(Path(folder) / "learning_curves.png") as tmp:
        tmp.write_bytes(b"half a plot")
        time.sleep(120)


def test_a_member_stopped_by_sigterm_ends_as_on_ctrl_c_leaving_no_temporary_file(tmp_path):
    """SIGTERM (its command's death, or stop_members for one deaf to Ctrl-C) had ended it where
    it stood: a plot's temporary file stayed for good."""
    running: dict[int, Member] = {}
    start_member(running, multiprocessing.get_context("spawn"), writing_member, 1, str(tmp_path))
    member = running[1]
    member.read()
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(member.process.pid, signal.SIGTERM)
    while not member.ended:
        member.read()
    member.process.join(30)
    assert (member.succeeded, member.outcome) == (False, "it was interrupted")
    assert list(tmp_path.iterdir()) == []


def test_members_side_by_side_share_out_the_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpus() == ["0", "1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5, 7,9")  # more names than GPUs: CUDA stops early
    assert visible_gpus() == ["5", "7"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert visible_gpus() == []
    assert [member_gpu(number, ["5", "7"]) for number in (1, 2, 3)] == ["5", "7", "5"]
    assert member_gpu(2, ["5"]) is None and member_gpu(1, []) is None  # nothing to share out


def test_a_member_whose_command_is_gone_ends_quietly(monkeypatch):
    """Its command killed, the pipe has no reader: telling it how things went must not end the
    member in a BrokenPipeError's traceback."""
    from digit_recognizer import members

    monkeypatch.setattr(members, "_end_with", lambda parent: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest's handlers stay
    reader, sender = multiprocessing.Pipe(duplex=False)
    reader.close()
    members._run_member(lambda number: "done", 1, sender, os.getpid(), False)


def test_a_member_killed_for_memory_or_ended_without_a_word_is_named():
    assert member_failure(1, None, -signal.SIGKILL) == (
        "ensemble member 1's process killed by SIGKILL (by the system for memory, say) before "
        "it finished"
    )
    assert member_failure(1, None, 0) == (
        "ensemble member 1's process ended with exit status 0 before it finished"
    )


def test_a_member_tells_what_went_wrong_in_a_line(monkeypatch, capsys):
    """A refusal of the project's says itself; a bug is named by its kind (its traceback goes
    to the member's stderr once)."""
    from digit_recognizer import members
    from digit_recognizer.errors import DigitsError

    monkeypatch.setattr(members, "_end_with", lambda parent: None)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # pytest's handlers stay

    def failing(error: Exception):
        def train(number: int) -> None:
            raise error

        return train

    for error, told in (
        (DigitsError("train.csv: no rows"), "train.csv: no rows"),
        (ValueError("a bug"), "ValueError: a bug"),
    ):
        reader, sender = multiprocessing.Pipe(duplex=False)
        members._run_member(failing(error), 1, sender, os.getpid(), False)
        assert reader.recv() == members.TRAINING and reader.recv() == (False, told)
    assert capsys.readouterr().err.count("Traceback") == 1
