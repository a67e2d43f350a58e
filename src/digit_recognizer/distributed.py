"""torch.distributed plumbing shared by training and batch inference: this process's rank, the
process group (gloo on CPU, NCCL with one GPU per rank), and launching torchrun.

    digits train --train train.csv --nproc 2            # = torchrun ... -m digit_recognizer.train
    digits predict runs/cnn shards/ --nproc 2           # = torchrun ... -m digit_recognizer.predict
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from digit_recognizer.errors import DigitsError
from digit_recognizer.models.runtime import resolve_device

log = logging.getLogger(__name__)


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
        # torchrun's own variables are the only environment the package reads.
        if "RANK" not in os.environ:
            return cls()
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


def close_distributed() -> None:
    """Leave the process group, if this process joined one.

    A torchrun process that exits with its gloo group still open can abort in the group's
    teardown ("terminate called without an active exception", SIGABRT) after its work is done,
    failing a job that succeeded.
    """
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce(
    tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM
) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op)
    return tensor


def run_torchrun(nproc: int, module: str, args: list[str]) -> None:
    """Run ``python -m module args`` in ``nproc`` processes on this machine (torchrun).

    For several machines, call torchrun directly (README, 'Data bigger than memory, many
    processes').
    """
    # torchrun's own files go to a folder of ours, removed afterwards (else a torchelastic_*
    # folder is left in /tmp by every launch).
    with tempfile.TemporaryDirectory(prefix="digits-torchrun-logs-") as logs:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={nproc}", f"--log-dir={logs}",
                   "-m", module, *args]  # fmt: skip
        log.info("launching %d processes: %s", nproc, " ".join(command))
        launcher = subprocess.Popen(command)
        # SIGTERM (a job scheduler, `kill`) raises here as Ctrl-C does, so that either way the
        # launcher is stopped, and stops its workers, rather than left training as an orphan.
        in_main_thread = threading.current_thread() is threading.main_thread()  # signal's rule
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
        try:
            returncode = launcher.wait()
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
            if launcher.poll() is None:
                launcher.terminate()
                launcher.wait()
    if returncode:
        raise DigitsError(f"{nproc} processes of {module} failed (exit status {returncode}); "
                          "see the log above")  # fmt: skip


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
