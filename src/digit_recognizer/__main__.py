"""`python -m digit_recognizer ...`: the `digits` command where its entry point is not installed,
and in each of torchrun's processes (`torchrun ... -m digit_recognizer train ...`)."""

import contextlib
import os

from digit_recognizer.cli import app

# Guarded: processes that `--jobs` spawns import this module again, and must not rerun the command.
if __name__ == "__main__":
    # torch is imported for torchrun's processes only: `--help` and light commands start fast.
    # torchrun sets all three; a stray RANK alone is the command's to refuse, in one line.
    if {"RANK", "LOCAL_RANK", "WORLD_SIZE"} <= os.environ.keys():
        from digit_recognizer.distributed import torchrun_worker

        worker = torchrun_worker()
    else:
        worker = contextlib.nullcontext()
    with worker:
        app(prog_name="digits")
