"""Model registry: one dict from CLI name (``cnn``, ``seed-cnn``, ``logreg``...) to builder.

Builders sit beside their class and register themselves with ``@register``; ``build`` is the only
way the rest of the package makes a model, so a model is usable (and tested, see
``tests/test_models.py``) everywhere the day it is registered.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from digit_recognizer.errors import UnknownModelError

ModelKind = Literal["net", "classical"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., Any]
    kind: ModelKind  # "net": a torch nn.Module trained by train.py; "classical": a sklearn Pipeline
    description: str


_REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, *, kind: ModelKind) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``builder`` under ``name``; a duplicate name is a programming error."""

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY:
            raise ValueError(f"model name '{name}' is already registered")
        summary = (builder.__doc__ or "").strip().splitlines()[:1]
        # Plain text for `digits models` and the API: the docstring's ``literal`` marks dropped.
        description = summary[0].replace("``", "") if summary else ""
        _REGISTRY[name] = ModelSpec(name, builder, kind, description)
        return builder

    return decorator


def get_spec(name: str, kind: ModelKind | None = None) -> ModelSpec:
    """Return the spec for ``name`` or raise ``UnknownModelError`` naming the valid choices, those
    of ``kind`` where the caller takes one kind only (training's nets, else ``logrg`` is
    answered "Did you mean 'logreg'?", which training then refuses as not a net)."""
    _load_builtin_models()
    if name not in _REGISTRY:
        choices = available(kind)
        close = difflib.get_close_matches(name.lower(), choices, n=1)  # names are lower case
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UnknownModelError(f"unknown model '{name}'.{hint} Available: {', '.join(choices)}")
    return _REGISTRY[name]


def build(name: str, **overrides: Any) -> Any:
    """Build a fresh, untrained model by registry name, with builder keyword overrides."""
    return get_spec(name).builder(**overrides)


def available(kind: ModelKind | None = None) -> list[str]:
    """Registered names, optionally only nets or only classical models, in registration order."""
    _load_builtin_models()
    return [name for name, spec in _REGISTRY.items() if kind is None or spec.kind == kind]


def _load_builtin_models() -> None:
    # Importing the modules runs their @register decorators; deferred so that importing the
    # registry alone stays cheap and free of cycles.
    from digit_recognizer.models import classical, nets  # noqa: F401
