"""How each benchmark script ends on a mistake of its user's (a run directory that is not one,
an unknown preset, a port in use): one line on stderr and exit status 1, as `digits` does, not
a traceback. Anything else is a bug and keeps its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from digit_recognizer.errors import DigitsError


def run_script(main: Callable[[], None]) -> None:
    try:
        main()
    except (DigitsError, OSError) as error:  # OSError: no permission, a full disk, ...
        sys.exit(f"{Path(sys.argv[0]).name}: error: {error}")
