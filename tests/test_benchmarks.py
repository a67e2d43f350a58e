"""The benchmark scripts' own logic: how they take their arguments and fail, and how their
figures are counted. Their timings are never run here (benchmarks/ measures; tests check)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def test_a_user_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """beyond_mnist.py given a folder that holds no run had ended in ModelFileError's traceback."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "beyond_mnist.py"), str(tmp_path)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (f"beyond_mnist.py: error: {tmp_path}/model.json: not found; "
                           f"is {tmp_path} a trained run directory?\n")  # fmt: skip
