"""The benchmark scripts' own logic: how they take their arguments and fail, and how their
figures are counted. Their timings are never run here (benchmarks/ measures; tests check)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType

import pytest

from digit_recognizer.errors import ConfigError

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


@pytest.fixture
def import_script(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], ModuleType]:
    """Imports a benchmark script by name, its folder on the path as when it runs from there."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module


def test_a_user_error_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """beyond_mnist.py given a folder that holds no run had ended in ModelFileError's traceback."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / "beyond_mnist.py"), str(tmp_path)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == (f"beyond_mnist.py: error: {tmp_path}/model.json: not found; "
                           f"is {tmp_path} a trained run directory?\n")  # fmt: skip


class Healthy(BaseHTTPRequestHandler):
    """Another server on the port: answers /health as `digits serve` does."""

    def do_GET(self) -> None:
        body = b'{"status": "ok"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_serve_load_refuses_a_port_another_server_holds(
    import_script: Callable[[str], ModuleType], tmp_path: Path
) -> None:
    """It had taken the other server's /health for its own (still loading, it failed to bind
    later) and measured that server under its backend's name."""
    other = ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    port = other.server_address[1]
    try:
        with pytest.raises(ConfigError, match=f"cannot serve at 127.0.0.1:{port}"):
            import_script("serve_load").start_server(tmp_path, "onnx", port).terminate()
    finally:
        other.shutdown()
        other.server_close()
