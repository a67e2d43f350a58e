"""`python -m digit_recognizer ...`: the `digits` command where its entry point is not installed."""

from digit_recognizer.cli import app

# Guarded: processes that `--jobs` spawns import this module again, and must not rerun the command.
if __name__ == "__main__":
    app(prog_name="digits")
