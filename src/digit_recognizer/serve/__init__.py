"""The prediction server: FastAPI app, API routes and the draw-a-digit page.

digits serve runs/cnn                       # http://127.0.0.1:8000, API docs at /docs
digits serve runs/cnn --backend onnx        # onnxruntime instead of PyTorch

from digit_recognizer.serve import ServeConfig, create_app
app = create_app(Path("runs/cnn"), ServeConfig(backend="onnx"))
"""

from digit_recognizer.serve.app import ServeConfig, create_app, run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
