"""`python -m digit_recognizer ...`: the `digits` command where its entry point is not installed."""

from digit_recognizer.cli import app

app(prog_name="digits")
