"""`python -m digit_recognizer ...`: the `digits` command where its entry point is not installed,
and in each of torchrun's processes (`torchrun ... -m digit_recognizer train ...`)."""

from digit_recognizer.cli import app
from digit_recognizer.distributed import torchrun_worker

# Guarded: processes that `--jobs` spawns import this module again, and must not rerun the command.
if __name__ == "__main__":
    with torchrun_worker():
        app(prog_name="digits")
