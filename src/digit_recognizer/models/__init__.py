"""Models: torch nets and scikit-learn pipelines behind one name -> builder registry."""

from digit_recognizer.models.registry import available, build, get_spec, register

__all__ = ["available", "build", "get_spec", "register"]
