"""Errors a user can fix. The CLI prints them as one line and exits non-zero; others are bugs."""


class DigitsError(Exception):
    """Base class: the message says where, what was expected, what was found, and the fix."""


class DataError(DigitsError):
    """A data file is missing, corrupt or malformed (the message names file, line and column)."""


class ConfigError(DigitsError):
    """A configuration key or value is invalid."""


class DivergedError(ConfigError):
    """The training loss or the net's weights became NaN or infinite: the learning rate is too
    high for the net."""


class UnknownModelError(DigitsError):
    """A model name is not in the registry."""


class OutputError(DigitsError):
    """An output file cannot be written where it was asked for (a directory, no permission)."""


class ModelFileError(DigitsError):
    """A saved model or run directory is missing, incomplete or corrupt."""


def counted(n: int, noun: str) -> str:
    """``n`` (thousands separated) and ``noun``, plural unless one: "1 shard", "42,000 rows"."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def first_line(error: BaseException) -> str:
    """An exception's message on one line, up to 200 characters (torch's run to pages), to
    quote inside one of ours; its type where it has none."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."
