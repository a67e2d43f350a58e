"""Saving and loading nets: ``model.safetensors`` (weights only, nothing executable) plus
``model.json`` (registry name, builder arguments, preprocessing, classes, metrics)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import nn

from digit_recognizer.errors import ConfigError, ModelFileError, UnknownModelError, first_line
from digit_recognizer.fileio import write_text, write_together
from digit_recognizer.models.nets import MNIST_MEAN, MNIST_STD
from digit_recognizer.models.registry import build, get_spec
from digit_recognizer.models.runtime import keeps_callers_random_state

WEIGHTS_FILE = "model.safetensors"
META_FILE = "model.json"
ENSEMBLE_FILE = "ensemble.json"  # a run directory of member run directories
FORMAT_VERSION = 1
# The commands that take a classical model's run directory as well as a net's, which the
# refusals of the others name: report, explain and export need a net's layers and gradients.
PIPELINE_COMMANDS = "`digits predict`, `predict-image`, `evaluate` and `serve`"

PREPROCESSING = {
    "input": "float32 (N, 1, 28, 28) in [0, 1]: uint8 pixels / 255, white ink on black",
    "layout": "MNIST: digit fitted in a 20x20 box, centred by centre of mass in 28x28",
    "normalisation": {"mean": MNIST_MEAN, "std": MNIST_STD, "inside_model": True},
}


def save_net(
    run_dir: Path, model: nn.Module, name: str, params: dict[str, Any], extra: dict | None = None
) -> None:
    """Write weights and metadata (``write_model_files``); ``params`` are the builder's keyword
    arguments."""
    state = {key: value.detach().contiguous().cpu() for key, value in model.state_dict().items()}
    meta = {
        "format_version": FORMAT_VERSION,
        "framework": "torch",
        "model": name,
        "params": params,
        "classes": list(range(10)),
        "preprocessing": PREPROCESSING,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        **(extra or {}),
    }
    write_model_files(run_dir / WEIGHTS_FILE, lambda file: save_file(state, str(file)), meta)


def write_model_files(
    weights: Path, write_weights: Callable[[Path], object], meta: dict[str, Any]
) -> None:
    """A model's weights file (``write_weights`` writes it to the path it is given) and the
    ``model.json`` of ``meta`` beside it, atomically and together (``write_together``): a kill
    or a full disk between the two would leave new weights beside an older model's model.json,
    which they do not fit (a net's architecture, a pipeline's format)."""
    text = json.dumps(meta, indent=2) + "\n"
    write_together([
        (weights, write_weights),
        (weights.parent / META_FILE, lambda file: file.write_text(text, encoding="utf-8")),
    ])  # fmt: skip


def check_regular_file(path: Path) -> Path:
    """``path``, unless it is there as something else than a regular file: a pipe would be
    waited on for ever, /dev/zero read without end."""
    if path.exists() and not path.is_file():
        raise ModelFileError(f"{path}: not a regular file (a folder, a pipe or a device)")
    return path


def read_safetensors(path: Path, load: Callable[[bytes], dict[str, Any]] = load_tensors) -> dict:
    """Tensors of a safetensors file via ``load`` (torch's or numpy's), or a ``ModelFileError``
    naming the file when it is missing or not safetensors."""
    try:
        # Read here, not by safetensors' load_file, which refuses a path that is not UTF-8 (a
        # run folder named in latin-1).
        return load(check_regular_file(path).read_bytes())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: not found") from None
    except (SafetensorError, OSError, TypeError) as error:  # TypeError: bf16 read as numpy
        raise ModelFileError(f"{path}: not a readable safetensors file ({error})") from None


def read_meta(run_dir: Path) -> dict[str, Any]:
    """The parsed ``model.json``; ``ModelFileError`` naming the file when absent or invalid."""
    path = Path(run_dir) / META_FILE
    try:
        meta = json.loads(check_regular_file(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        refuse_ensemble(Path(run_dir))
        if member_run_dir(run_dir, 1).is_dir():  # ensemble.json is written once all trained
            raise ModelFileError(
                f"{run_dir} holds an ensemble's members but no {ENSEMBLE_FILE}: its training "
                "was stopped; the command that trained it, with --resume, finishes it, or give "
                f"its finished members, such as {member_run_dir(run_dir, 1)}"
            ) from None
        raise ModelFileError(f"{path}: not found; is {run_dir} a trained run directory?") from None
    except NotADirectoryError:
        raise ModelFileError(f"{run_dir}: a file, where a trained run directory belongs") from None
    # ValueError: also a 5,000-digit number (Python's int limit); RecursionError: deep nesting.
    except (ValueError, RecursionError) as error:
        raise ModelFileError(f"{path}: not valid JSON ({error!s:.200})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), str):
        raise ModelFileError(f"{path}: missing the 'model' name")
    if meta.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ModelFileError(f"{path}: format_version {meta['format_version']!r:.20}, where this "
                             f"version of digit-recognizer reads {FORMAT_VERSION}")  # fmt: skip
    return meta


def load_net(run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the net named in ``model.json`` and load its weights; returns (model, meta)."""
    run_dir = Path(run_dir)
    meta = read_meta(run_dir)
    name, params = net_recipe(run_dir / META_FILE, meta)
    path = run_dir / WEIGHTS_FILE
    state = read_safetensors(path)
    model = _build_net(run_dir / META_FILE, name, params, state)
    model.load_state_dict(state)  # the names and shapes fit: _build_net compared them
    # A NaN weight, or an integer one, loads and then predicts 0 (or one digit) for every image.
    if any(
        not tensor.is_floating_point() or not tensor.isfinite().all()
        for tensor in (
            state[key] for key, value in model.state_dict().items() if value.is_floating_point()
        )
    ):
        raise ModelFileError(f"{path}: holds weights that are not finite floats (NaN, infinite "
                             "or integers): a damaged file; retrain the run")  # fmt: skip
    return model.eval(), meta


def net_recipe(meta_path: Path, meta: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registry name and builder arguments ``model.json`` records for a net; a
    ``ModelFileError`` naming the file for anything else."""
    name, params = meta["model"], meta.get("params", {})
    try:
        kind = get_spec(name).kind
    except UnknownModelError as error:
        raise ModelFileError(f"{meta_path}: {error}") from None
    if kind != "net":
        raise ModelFileError(
            f"{meta_path}: '{name}' is a scikit-learn model, not a net: this command takes a "
            f"net's run ({PIPELINE_COMMANDS} take both; in Python, load_estimator)"
        )
    if not isinstance(params, dict):
        raise ModelFileError(f"{meta_path}: 'params' must be an object, got {params!r:.40}")
    return name, params


# Its initial weights, replaced by the saved ones, are drawn without advancing the caller's torch
# random stream (a notebook's seeded draws stay as they were).
@keeps_callers_random_state
def _build_net(
    meta_path: Path, name: str, params: dict[str, Any], state: dict[str, Any]
) -> nn.Module:
    """The untrained net ``name`` built with ``params``, if the weights ``state`` fit it."""
    try:
        # Shapes first, on no memory: widths of 20,000 in an edited model.json would take ~14 GB
        # before the weights could be found not to fit.
        with torch.device("meta"):
            shapes = {key: value.shape for key, value in build(name, **params).state_dict().items()}
        if shapes != {key: value.shape for key, value in state.items()}:
            raise ModelFileError(f"{meta_path.parent / WEIGHTS_FILE}: weights do not fit model "
                                 f"'{name}' with {params}")  # fmt: skip
        return build(name, **params)
    # ConfigError: a builder's refusal of its arguments ("give 3 widths"), which names
    # neither the file nor that it is the run's, not a flag, that is wrong.
    except (TypeError, ValueError, RuntimeError, ConfigError) as error:  # a tampered model.json
        raise ModelFileError(
            f"{meta_path}: cannot build '{name}' from {params} ({first_line(error)})"
        ) from None


def member_run_dir(run_dir: Path, number: int) -> Path:
    """Where ensemble member ``number`` (from 1) of ``run_dir`` trains."""
    return Path(run_dir) / f"member-{number}"


def write_ensemble(run_dir: Path, members: list[Path]) -> None:
    """Mark ``run_dir`` as an ensemble of ``members`` (sub-directories, stored relative)."""
    names = [str(Path(member).relative_to(run_dir)) for member in members]
    write_text(Path(run_dir) / ENSEMBLE_FILE, json.dumps({"members": names}, indent=2) + "\n")


def refuse_ensemble(run_dir: Path) -> None:
    """``ModelFileError`` if ``run_dir`` is an ensemble: for commands that take one model."""
    if (run_dir / ENSEMBLE_FILE).exists() and not (run_dir / META_FILE).exists():
        # A member it really lists: one put together by hand need not have a member-1.
        raise ModelFileError(
            f"{run_dir} is an ensemble ({ENSEMBLE_FILE}); this takes one model: give one of its "
            f"members, such as {expand_ensembles([run_dir])[0]} (predict, evaluate and "
            "predict-image take the ensemble)"
        )


def expand_ensembles(run_dirs: list[Path]) -> list[Path]:
    """Replace each ensemble directory by its member run directories, in order; a member that is
    an ensemble itself by its own members (each model listed weighs the same in the average).
    A run listed twice, which would weigh double, is refused, naming where it was listed."""
    listed: dict[str, Path] = {}  # by real path: "a", "./a" and a symlink to it are one run
    for run, manifest in (pair for run_dir in run_dirs for pair in _members(Path(run_dir), ())):
        if (first := listed.setdefault(os.path.realpath(run), run)) is not run:
            where = f"{manifest}: member" if manifest else "run directory"
            also = f" (also as {first})" if first != run else ""
            raise ModelFileError(
                f"{where} {run} is listed twice{also}, directly or through an ensemble: it "
                "would weigh double in the average; list each run once"
            )
    return list(listed.values())


def _members(run_dir: Path, within: tuple[str, ...]) -> list[tuple[Path, Path | None]]:
    """``run_dir``'s run directories, each with the manifest listing it: itself (None), or an
    ensemble's members; ``within``: the ensembles listing it, as real paths, to refuse a loop
    (a member "." or "", say)."""
    manifest = run_dir / ENSEMBLE_FILE
    if not manifest.exists() or (run_dir / META_FILE).exists():
        return [(run_dir, None)]
    try:
        text = check_regular_file(manifest).read_text(encoding="utf-8")
        members = json.loads(text)["members"]
    # ValueError: also a 5,000-digit number; RecursionError: deep nesting.
    except (ValueError, RecursionError, KeyError, TypeError) as error:
        raise ModelFileError(
            f"{manifest}: not a valid ensemble manifest ({error!s:.200})"
        ) from None
    if (
        not members
        or not isinstance(members, list)
        or not all(isinstance(member, str) and "\0" not in member for member in members)
    ):
        raise ModelFileError(
            f"{manifest}: 'members' must be a non-empty list of run directory names"
        )
    # realpath, not resolve(): a member that is a symlink loop is found out by read_meta.
    within = (*within, os.path.realpath(run_dir))
    expanded = []
    for member in members:
        if os.path.realpath(run_dir / member) in within:
            raise ModelFileError(f"{manifest}: member {member!r} is this ensemble or one that "
                                 "lists it, a loop; list run directories")  # fmt: skip
        expanded += [
            (run, listed_in or manifest) for run, listed_in in _members(run_dir / member, within)
        ]
    return expanded
