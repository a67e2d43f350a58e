"""Where the commands' progress log goes: rich's columns on a terminal, plain lines elsewhere."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler


def log_handler(console: Console, message_format: str = "%(message)s") -> logging.Handler:
    """A handler writing to ``console``'s stream. In a pipe, a file or a CI job's log each
    record is one line, its level in front: rich wraps and pads records to the console's width
    (80 columns where there is no terminal), which had split a path or a figure across lines
    that grep and other programs then missed."""
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, show_time=False)
        handler.setFormatter(logging.Formatter(message_format))
        return handler
    handler = logging.StreamHandler(console.file)
    handler.setFormatter(logging.Formatter(f"%(levelname)-8s {message_format}"))
    return handler
