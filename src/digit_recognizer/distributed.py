"""torch.distributed plumbing shared by training and batch inference: this process's rank, the
process group (gloo on CPU, NCCL with one GPU per rank), and launching torchrun.

    digits train --train train.csv --nproc 2      # = torchrun ... -m digit_recognizer train ...
    digits predict runs/cnn shards/ --nproc 2     # = torchrun ... -m digit_recognizer predict ...
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from digit_recognizer.config import save_config
from digit_recognizer.errors import ConfigError, DigitsError, first_line
from digit_recognizer.fileio import locked_temporary_dir
from digit_recognizer.interrupts import Terminated, stop_signals_interrupt
from digit_recognizer.models.runtime import resolve_device

log = logging.getLogger(__name__)

PEER_FAILURE_GRACE_S = 2.0
LAUNCHER_GRACE_S = 5.0  # for torchrun to stop its workers after Ctrl-C (they stop at once)
# The longest ddp_timeout_s (31 years): torch's process groups count the timeout in int64
# nanoseconds, and past ~292 years fail in a traceback (1e13 s: gloo's "Invalid timeout";
# 1e300: an OverflowError).
MAX_DDP_TIMEOUT_S = 1e9


def check_ddp_timeout(timeout_s: float) -> None:
    """``ConfigError`` unless ``timeout_s`` (a job's ddp_timeout_s) is one torch's process
    groups take: nan and inf would end every torchrun process in an OverflowError (a ValueError
    for nan) making its timedelta."""
    if not 0 < timeout_s <= MAX_DDP_TIMEOUT_S:
        raise ConfigError(f"ddp_timeout_s must be in (0, {MAX_DDP_TIMEOUT_S:g}] seconds, got "
                          f"{timeout_s}")  # fmt: skip


def check_nproc(nproc: int) -> None:
    """``ConfigError`` unless ``nproc`` (--nproc) is a number of processes: 1 at least."""
    if nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {nproc}")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> Distributed:
        # torchrun's own variables: no setting of ours hides in the environment. The others read
        # are the platform's own (XDG_CACHE_HOME, OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES).
        if "RANK" not in os.environ:
            return cls()
        missing = [name for name in ("LOCAL_RANK", "WORLD_SIZE") if name not in os.environ]
        if missing:  # a stray RANK (some launchers set it alone): which process is this?
            raise ConfigError(f"RANK is set ({os.environ['RANK']}) without "
                              f"{' and '.join(missing)}: torchrun sets all three; unset RANK to "
                              "run as one process")  # fmt: skip
        return cls(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]),
                   int(os.environ["WORLD_SIZE"]))  # fmt: skip


def init_distributed(device_name: str, timeout_s: float) -> tuple[Distributed, torch.device]:
    """Join the torchrun process group if there is one: gloo on CPU, NCCL with one GPU a rank.

    A rank that dies makes the others fail at their next collective after ``timeout_s`` instead
    of hanging forever (torchrun then stops the whole job).
    """
    dist_env = Distributed.from_env()
    device = resolve_device(device_name)
    if "RANK" in os.environ:
        if device.type == "cuda":
            device = torch.device("cuda", dist_env.local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(
                backend="nccl" if device.type == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
            )
    return dist_env, device


@contextlib.contextmanager
def torchrun_worker() -> Iterator[None]:
    """Run a command in one of torchrun's processes (`python -m digit_recognizer`, whose
    commands are all run so; `train` and `predict` join the job's process group).

    When one rank fails (a malformed row in its share of the shards), the others fail too, at
    their next collective ("Connection closed by peer"), and torchrun stops them (SIGTERM) within
    its monitor interval, 0.1 s. Their tracebacks would only bury the failed rank's message, so a
    rank waits that out several times over before it prints one.
    """
    try:
        yield
    except Exception as error:
        dist_env = Distributed.from_env()
        if dist_env.world_size > 1:
            time.sleep(PEER_FAILURE_GRACE_S)
        if isinstance(error, RuntimeError) and "Timed out waiting" in str(error):
            # gloo's timeout: a plain RuntimeError from deep in a collective, whose page of
            # traceback says nothing a user can act on.
            raise SystemExit(f"error: rank {dist_env.rank}: no answer from the job's other "
                             f"processes in time ({first_line(error)}): one of them hung or "
                             "stopped; see its own message, or give them longer with "
                             "ddp_timeout_s") from None  # fmt: skip
        raise
    finally:
        # A torchrun process that exits with its gloo group still open can abort in the group's
        # teardown ("terminate called without an active exception", SIGABRT) after its work is
        # done, failing a job that succeeded.
        if dist.is_initialized():
            dist.destroy_process_group()


def all_reduce(
    tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def run_torchrun(nproc: int, module: str, args: list[str], config: Any | None = None) -> None:
    """Run ``python -m module args`` in ``nproc`` processes on this machine (torchrun): for a
    command, ``module`` digit_recognizer and ``args`` the command's name and arguments. A
    ``config`` (a job's dataclass, resolved) goes to a TOML file that every process reads
    (``--config``), so that no process can differ from another in a setting.

    For several machines, call torchrun directly (README, 'Data bigger than memory, many
    processes').
    """
    # torchrun's own files go to a folder of ours, removed afterwards (else a torchelastic_*
    # folder is left in /tmp by every launch), or by a later launch if this command is killed.
    with locked_temporary_dir("digits-torchrun-") as scratch:
        if config is not None:
            resolved = scratch / "config.toml"
            save_config(config, resolved)
            args = [*args, "--config", str(resolved)]
        torchrun_args = ["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={scratch}",
                         *_nohup_args(), "-m", module, *args]  # fmt: skip
        log.info("launching %d processes: torchrun %s", nproc, " ".join(torchrun_args))
        # The CPU's threads shared out, as `--jobs` does (torchrun would give each process one).
        threads = os.environ.get("OMP_NUM_THREADS", str(max(1, torch.get_num_threads() // nproc)))
        env = os.environ | {"OMP_NUM_THREADS": threads, _PARENT_VARIABLE: str(os.getpid())}
        launcher = subprocess.Popen([sys.executable, "-c", _LAUNCHER, *torchrun_args], env=env)
        # SIGTERM (a job scheduler, `kill`) raises here as Ctrl-C does, so that either way the
        # launcher is stopped, and stops its workers, rather than left training as an orphan.
        try:
            with stop_signals_interrupt():
                returncode = launcher.wait()
        except KeyboardInterrupt as stop:
            if not isinstance(stop, Terminated) or stop.signum == signal.SIGHUP:
                # Ctrl-C or a closed terminal's SIGHUP reached the launcher too (a terminal
                # signals the whole process group), which is stopping its workers: a SIGTERM
                # now would break into that shutdown.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    launcher.wait(timeout=LAUNCHER_GRACE_S)
            raise
        finally:
            if launcher.poll() is None:
                launcher.terminate()
                launcher.wait()
    ran = " ".join(["python -m", module, *args[:1]])
    if returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGHUP):
        raise KeyboardInterrupt(f"the {nproc} processes of `{ran}` were stopped")
    if returncode:
        raise DigitsError(f"`{ran}` failed in its job of {nproc} processes (exit status "
                          f"{returncode}); see the log above")  # fmt: skip


# torchrun's command line, run by a launcher that reports its workers' failure, or a signal
# that stopped them, by its exit status alone: each worker has printed its own error (a
# malformed CSV's file, line and column), and torchrun's main would bury it under its own
# traceback and table of failed ranks; the command that launched it says "interrupted".
_LAUNCHER = "import sys; from digit_recognizer.distributed import _launch; _launch(sys.argv[1:])"
_PARENT_VARIABLE = "DIGITS_TORCHRUN_PARENT"  # the launching process's pid
PR_SET_PDEATHSIG = 1  # prctl's option: a signal for this process when its parent ends


def _nohup_args() -> list[str]:
    """torchrun's flags for a command under nohup: torchrun handles SIGHUP whatever its parent
    ignores, and hands it on to the workers, which then stop. (Its flag came with torch 2.9:
    before, a closed terminal still stops a --nproc run under nohup.)"""
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        return []
    from torch.distributed.launcher.api import LaunchConfig

    has_flag = "signals_to_handle" in {field.name for field in dataclasses.fields(LaunchConfig)}
    return ["--signals-to-handle=SIGTERM,SIGINT,SIGQUIT"] if has_flag else []


def _stop_with_parent(parent: int) -> None:
    """SIGTERM this launcher when ``parent``, the command that started it, ends, even killed
    outright (SIGKILL, the OOM killer), as torchrun then stops its workers, which would train
    on as orphans, holding the run's lock against the --resume. Linux only (prctl)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except AttributeError:  # no prctl: another system than Linux
        prctl = None
    if prctl is not None and prctl(PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM)) != 0:
        log.warning("torchrun's launcher will not stop with its command if that is killed "
                    "outright (prctl: %s)", os.strerror(ctypes.get_errno()))  # fmt: skip
    if os.getppid() != parent:  # it ended before the prctl took hold
        sys.exit(128 + signal.SIGTERM)


def _launch(torchrun_args: list[str]) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _stop_with_parent(int(os.environ.get(_PARENT_VARIABLE, os.getppid())))
    try:
        run(parse_args(torchrun_args))
    except ChildFailedError:
        sys.exit(1)
    except SignalException as stop:  # the agent has stopped its workers
        sys.exit(128 + stop.sigval)
    except KeyboardInterrupt:
        sys.exit(128 + signal.SIGINT)
