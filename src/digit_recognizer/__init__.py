"""digit-recognizer: the Kaggle Digit Recognizer competition end to end.

Stages, each a module, data flowing one way:
data (read, validate, split, augment) -> models -> train -> evaluate / predict -> report -> cli.
"""

from digit_recognizer.errors import ConfigError, DataError, DigitsError, UnknownModelError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DigitsError", "UnknownModelError", "__version__"]
