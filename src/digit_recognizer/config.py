"""Job configuration shared by every job's dataclass: defaults < TOML file < command-line flags.

Each job defines its own dataclass beside the code that consumes it (``TrainConfig`` in
``train.py``); this module only loads, checks and writes them, so every job gets the same two
checks (unknown key, wrong type) with the valid keys in the message.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import numbers
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from digit_recognizer.errors import ConfigError, UnknownModelError
from digit_recognizer.fileio import write_text

C = TypeVar("C")

# TOML has no null: an optional setting that is off is written, and read, as this string, so a
# saved config unsets what a preset below it would set (a fast run's ema_decay stays off).
NONE = "none"


def zeros_as_none(config: Any, keys: Iterable[str]) -> None:
    """Each of ``keys`` that is 0 in ``config`` made None: settings whose 0 is off, from a
    flag (--patience 0 undoes a preset's or a --config's value, as a TOML's none does), a TOML
    or Python, recorded one way, else patience = 0 in a TOML is refused as "must be >= 1"."""
    for key in keys:
        if getattr(config, key) == 0:
            setattr(config, key, None)


def load_config(
    config_class: type[C],
    toml_path: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    preset: Mapping[str, Any] | None = None,
) -> C:
    """Build ``config_class`` from its defaults, a preset, a TOML file, then ``overrides`` (flags).

    Overrides whose value is ``None`` are flags the user did not give and are skipped. A value
    out of range is blamed on its flag (``--epochs must be >= 1``) or on the file that gave it.
    """
    values: dict[str, Any] = dict(preset or {})
    flags = {key: value for key, value in (overrides or {}).items() if value is not None}
    if toml_path is None:
        return _make_from_flags(config_class, values, flags)
    values.update(read_toml(toml_path))
    try:
        return make_config(config_class, values | flags, source=str(toml_path))
    except (ConfigError, UnknownModelError):
        if not flags:
            raise
    # The file's values or the flags', else `--resume --epochs 0` blames the run's config.toml.
    # The file's, but for those the flags replace, are checked alone; if they pass, the flags
    # are named. Its model stays, whatever --model says: its widths are written for it (without
    # it they would be checked against the default net, an error naming a 'cnn' nobody chose).
    alone = {key: value for key, value in values.items() if key not in flags or key == "model"}
    try:
        make_config(config_class, alone, source=str(toml_path))
    except UnknownModelError:
        if "model" not in flags:
            raise
        del alone["model"]  # a name --model replaces is not blamed for another flag's value
        make_config(config_class, alone, source=str(toml_path))
    return _make_from_flags(config_class, values, flags)


def flag_name(key: str, value: Any = None) -> str:
    """The command-line flag that sets ``key`` to ``value``: its words without their unit
    (``time_budget_s``: ``--time-budget``, ``max_memory_gb``: ``--max-memory``), a switch's
    negative form where it is off (``amp`` False: ``--no-amp``, the flag typed, so that
    ``digits tune --model knn --no-amp`` is not told of ``--amp``)."""
    negation = "no-" if value is False else ""
    return f"--{negation}" + re.sub(r"_(s|gb)$", "", key).replace("_", "-")


def _make_from_flags(
    config_class: type[C], values: Mapping[str, Any], flags: Mapping[str, Any]
) -> C:
    """``make_config`` of ``values`` under ``flags``; an error about a flag's value names the flag
    as it is typed (``--valid-size must be in [0, 1)``, not ``flags: valid_size must be ...``)."""
    try:
        return make_config(config_class, {**values, **flags}, source="flags")
    except (ConfigError, UnknownModelError) as error:
        message = str(error).removeprefix("flags: ")
        if isinstance(error, UnknownModelError):
            if "model" in flags:
                raise UnknownModelError(f"--model: {message}") from None
            raise
        # Range checks begin with their key ("epochs must be >= 1"), type checks quote it; a
        # check of one setting against another quotes that one ("model 'seed-cnn' has no
        # 'widths' setting": --widths under the seed preset's model).
        quoted_key, _, rest = message.partition(" ")
        key = quoted_key.strip("'")
        if key in flags:
            # Another setting it quotes is named as its flag too, where a flag gave it:
            # "--elastic 20 scaled by --augment 1.5 is 30 px", not "by 'augment' 1.5".
            for other, value in flags.items():
                rest = rest.replace(f"'{other}'", flag_name(other, value))
            raise ConfigError(f"{flag_name(key, flags[key])} {rest}") from None
        keys = {field.name for field in dataclasses.fields(config_class)}  # type: ignore[arg-type]
        quoted = [name for name in flags if name in keys and f"'{name}'" in message]
        if not quoted:
            raise
        raise ConfigError(f"{flag_name(quoted[0], flags[quoted[0]])}: {message}") from None


def read_toml(toml_path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a flat dict; a ``[section]`` table is flattened into its keys,
    which must not repeat one set elsewhere in the file (else the last would silently win)."""
    path = Path(toml_path)
    try:
        # utf-8-sig, else a byte-order mark (Windows Notepad's, before 2019) makes a valid file
        # "not valid TOML (Invalid statement (at line 1, column 1))".
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path}: a directory; give its TOML file (a run's config.toml)"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None
    flat: dict[str, Any] = {}
    set_in: dict[str, str] = {}  # key -> where in the file it was set
    for key, value in data.items():
        where = f"in [{key}]" if isinstance(value, dict) else "before any [section]"
        for name, item in (value if isinstance(value, dict) else {key: value}).items():
            if name in flat:
                raise ConfigError(f"{path}: '{name}' is set twice ({set_in[name]} and {where}); "
                                  "keep one")  # fmt: skip
            flat[name], set_in[name] = item, where
    return flat


def make_config(config_class: type[C], values: Mapping[str, Any], source: str = "config") -> C:
    """Check every key and value against the dataclass fields, then construct it."""
    hints = typing.get_type_hints(config_class)
    names = [field.name for field in dataclasses.fields(config_class)]  # type: ignore[arg-type]
    checked = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{key}' for {config_class.__name__}{hint}; "
                f"valid keys: {', '.join(names)}"
            )
        checked[key] = _coerce(value, hints[key], key, source)
    try:
        return config_class(**checked)
    except ConfigError as error:  # a value out of range: say where it came from
        raise ConfigError(f"{source}: {error}") from None
    except UnknownModelError as error:  # so that a TOML's model = "cnnn" names the file
        raise UnknownModelError(f"{source}: {error}") from None


def check_fields(config: Any) -> None:
    """Check and convert every field of the dataclass ``config`` in place, as ``make_config``
    does a file's or flags' values: for configs built in Python (``TrainConfig(lr=...)``),
    whose __post_init__ calls it first. ``ConfigError`` naming the field and what it takes."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        checked = _coerce(value, hints[field.name], field.name, type(config).__name__)
        if checked is not value:
            setattr(config, field.name, checked)


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Return ``value`` as ``annotation`` (int -> float widening, list -> tuple, ``NONE`` -> None
    where None is allowed) or raise."""
    options = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    is_none_word = isinstance(value, str) and value == NONE and str not in options
    if type(None) in options and (value is None or is_none_word):
        return None
    # numpy's scalars as Python's (np.arange grids, scipy.stats.randint), arrays as lists
    if isinstance(value, np.bool_):
        value = bool(value)
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    elif isinstance(value, np.ndarray):
        value = value.tolist()
    for option in options:
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if typing.get_origin(option) is tuple and isinstance(value, list | tuple):
            item_type = typing.get_args(option)[0]  # tuple[X, ...]: the configs' only kind
            return tuple(
                _coerce(item, item_type, f"{key}[{n}]", source) for n, item in enumerate(value)
            )
        if typing.get_origin(option) is typing.Literal and value in typing.get_args(option):
            return value
        if isinstance(option, type) and isinstance(value, option):
            if option is int and isinstance(value, bool):
                continue
            return value
    expected = " or ".join(_type_name(option) for option in options)
    raise ConfigError(f"{source}: '{key}' must be {expected}, got {value!r}")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _type_name(annotation: Any) -> str:
    if annotation is type(None):  # as a file or a flag says it, not Python's NoneType
        return repr(NONE)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(annotation))
    return getattr(annotation, "__name__", str(annotation))


def config_to_toml(config: Any) -> str:
    """Render a flat config dataclass as TOML, every field: ``None`` as ``NONE``."""
    lines = [f"# {type(config).__name__}"]
    for key, value in dataclasses.asdict(config).items():
        lines.append(f"{key} = {_toml_value(NONE if value is None else value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    return repr(value)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config atomically; the file alone reproduces the run."""
    write_text(path, config_to_toml(config))
