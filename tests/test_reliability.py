"""Killed runs resume to the same result; corrupt or tampered model files are refused with the
file's name; nothing in the package can execute code from a file a user was sent."""

from __future__ import annotations

import ast
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from typer.testing import CliRunner

from digit_recognizer.checkpoint import CHECKPOINT_FILE, load_checkpoint
from digit_recognizer.cli import app
from digit_recognizer.config import load_config
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.shards import read_labelled
from digit_recognizer.data.splits import split_for_training
from digit_recognizer.errors import ModelFileError
from digit_recognizer.models.classical import TRUSTED_FILE, load_pipeline
from digit_recognizer.models.storage import ENSEMBLE_FILE, META_FILE, WEIGHTS_FILE, load_net
from digit_recognizer.presets import get_preset
from digit_recognizer.train import TrainConfig, train

PACKAGE = Path(__file__).parents[1] / "src" / "digit_recognizer"
N_ROWS = 1_000  # 14 steps an epoch: the run's fixed costs (startup, report) dominate anyway
RECIPE = {"epochs": 3, "lr": 0.02, "batch_size": 64, "valid_size": 0.1, "seed": 0}
FLAGS = ["--epochs", "3", "--lr", "0.02", "--batch-size", "64", "--valid-size", "0.1",
         "--seed", "0"]  # fmt: skip
DIGITS = [sys.executable, "-c", "from digit_recognizer.cli import app; app()"]
# `digits` that SIGKILLs its own process at the n-th call of torch.save (after writing half of
# the file: a checkpoint being written) or of Tensor.backward (mid-epoch, mid-step), or sends
# itself Ctrl-C's SIGINT there ("ctrl-c:N"). A signal at the exact moment chosen, where a timer in
# the test could only hope to hit it.
DYING_DIGITS = [sys.executable, "-c", """
import os, signal, sys, torch
from digit_recognizer.cli import app
where, n = sys.argv.pop(1).split(":")
calls = []
def dying(function, half_written=False, how=signal.SIGKILL):
    def wrapper(*args, **kwargs):
        calls.append(None)
        if len(calls) == int(n) and not half_written:
            os.kill(os.getpid(), how)
        result = function(*args, **kwargs)
        if len(calls) == int(n) and half_written:
            os.truncate(args[1], os.path.getsize(args[1]) // 2)
            os.kill(os.getpid(), signal.SIGKILL)
        return result
    return wrapper
if where == "save":
    torch.save = dying(torch.save, half_written=True)
elif where == "ctrl-c":
    # As in a terminal: a test runner started in the background passes SIGINT on ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    torch.Tensor.backward = dying(torch.Tensor.backward, how=signal.SIGINT)
else:
    torch.Tensor.backward = dying(torch.Tensor.backward)
app()
"""]  # fmt: skip
runner = CliRunner()


# --- (a) SIGKILL at random points, resume, same result; Ctrl-C -----------------------------------


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory: pytest.TempPathFactory, small_train: DigitSet) -> Path:
    path = tmp_path_factory.mktemp("reliability") / "train.csv"
    write_kaggle_csv(path, small_train.images[:N_ROWS], small_train.labels[:N_ROWS])
    return path


def history_rows(run_dir: Path) -> list[str]:
    path = run_dir / "history.csv"
    return path.read_text().splitlines()[1:] if path.exists() else []


def without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in history]


def run_dying(kill_at: str, flags: list[str]) -> None:
    """Run ``digits`` until it kills itself at ``kill_at`` ("save:2", "backward:40")."""
    process = subprocess.run([*DYING_DIGITS, kill_at, *flags],
                             stderr=subprocess.DEVNULL, check=False, timeout=120)  # fmt: skip
    assert process.returncode == -signal.SIGKILL


def test_sigkill_mid_checkpoint_and_mid_epoch_then_resume_gives_the_same_run(
    tmp_path: Path, train_csv: Path
) -> None:
    """Killed while epoch 2's checkpoint is half written, resumed; killed at a random step of
    epoch 3, resumed to the end: the result is the uninterrupted run's to the last bit."""
    rng = random.Random(9)
    run_dir = tmp_path / "killed"
    flags = ["train", "--train", str(train_csv), "--out", str(run_dir), *FLAGS]
    steps_per_epoch = int(N_ROWS * 0.9) // 64  # less 10% validation, whole batches

    run_dying("save:2", flags)  # epoch 1's checkpoint is whole, epoch 2's half written
    assert len(list(run_dir.glob(f".{CHECKPOINT_FILE}.*.tmp"))) == 1, "no half-written file"
    assert load_checkpoint(run_dir, torch.device("cpu"))["epoch"] == 1  # intact

    # Resumed at epoch 2, so epoch 3's steps are calls steps_per_epoch + 1 ... 2 * steps_per_epoch
    step = rng.randint(steps_per_epoch + 1, 2 * steps_per_epoch)
    run_dying(f"backward:{step}", [*flags, "--resume"])
    assert load_checkpoint(run_dir, torch.device("cpu"))["epoch"] == 2
    assert len(history_rows(run_dir)) == 2

    subprocess.run([*DIGITS, *flags, "--resume"], stderr=subprocess.DEVNULL, check=True)

    train_set, valid_set = split_for_training(read_labelled(train_csv), 0.1, seed=0)
    # What `digits train` runs: the default preset under the flags.
    config = load_config(TrainConfig, overrides=RECIPE, preset=get_preset("default").overrides)
    straight = train(config, train_set, valid_set, tmp_path / "straight")
    resumed = load_checkpoint(run_dir, torch.device("cpu"))
    assert without_timing(resumed["history"]) == without_timing(straight.history)
    meta = json.loads((run_dir / META_FILE).read_text())
    assert meta["valid_accuracy"] == straight.valid_accuracy
    weights, _ = load_net(run_dir)
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(weights.state_dict()[key], value, rtol=0, atol=0)


def test_ctrl_c_says_how_to_resume_and_the_run_is_not_overwritten(
    tmp_path: Path, train_csv: Path
) -> None:
    run_dir = tmp_path / "stopped"
    flags = ["train", "--train", str(train_csv), "--out", str(run_dir), *FLAGS]
    steps_per_epoch = int(N_ROWS * 0.9) // 64
    stopped = subprocess.run([*DYING_DIGITS, f"ctrl-c:{steps_per_epoch + 3}", *flags],
                             capture_output=True, text=True, timeout=120)  # fmt: skip
    assert stopped.returncode == 130
    said = " ".join(stopped.stderr.split())  # rich wraps lines
    assert f"interrupted: the same command with --resume continues {run_dir}" in said
    assert "Traceback" not in said
    assert load_checkpoint(run_dir, torch.device("cpu"))["epoch"] == 1
    again = subprocess.run([*DIGITS, *flags], capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "already holds a training run" in again.stderr
    assert load_checkpoint(run_dir, torch.device("cpu"))["epoch"] == 1  # epoch 1 kept
    subprocess.run([*DIGITS, *flags, "--resume"], stderr=subprocess.DEVNULL, check=True)
    assert len(history_rows(run_dir)) == 3


def test_ctrl_c_stops_members_side_by_side_starts_no_other_and_resume_finishes_them(
    tmp_path: Path, train_csv: Path
) -> None:
    """`--preset best --jobs 2`: Ctrl-C, sent to the process group as a terminal sends it, once
    members 1 and 2 have a checkpoint, stops both and starts none of 3-5; --resume, here in one
    process, finishes all five."""
    run_dir = tmp_path / "ensemble"
    flags = ["train", "--train", str(train_csv), "--out", str(run_dir), "--preset", "best",
             "--epochs", "4", "--lr", "0.02", "--valid-size", "0.1"]  # fmt: skip
    # SIGINT's default action in this process and in the members' spawned processes.
    digits = [sys.executable, "-c", "import signal; signal.signal(signal.SIGINT, signal."
              "default_int_handler); from digit_recognizer.cli import app; app()"]  # fmt: skip
    process = subprocess.Popen([*digits, *flags, "--jobs", "2"], stderr=subprocess.PIPE,
                               text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((run_dir / f"member-{k}" / CHECKPOINT_FILE).exists() for k in (1, 2)):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    said = " ".join(stderr.split())  # rich wraps lines
    assert process.returncode == 130, said
    assert "interrupted: the same command with --resume continues" in said
    assert "Traceback" not in said
    assert [len(history_rows(run_dir / f"member-{k}")) < 4 for k in (1, 2)] == [True, True]
    # Queued members never started: only their settings are recorded, for --resume.
    assert not (run_dir / "member-3" / "checkpoint.pt").exists()
    assert (run_dir / "member-3" / "config.toml").exists()
    assert "the same command with --resume finishes the ensemble" in said
    subprocess.run([*DIGITS, *flags, "--resume"], stderr=subprocess.DEVNULL, check=True)
    assert [len(history_rows(run_dir / f"member-{k}")) for k in range(1, 6)] == [4] * 5


def test_sigterm_to_the_command_alone_stops_its_members_too(
    tmp_path: Path, train_csv: Path
) -> None:
    """`kill`, `timeout` and job schedulers send SIGTERM to the command's process only: it
    stops as on Ctrl-C and stops the members it started, rather than leave them training."""
    run_dir = tmp_path / "ensemble"
    flags = ["train", "--train", str(train_csv), "--out", str(run_dir), "--preset", "best",
             "--epochs", "4", "--lr", "0.02", "--valid-size", "0.1", "--jobs", "2"]  # fmt: skip
    process = subprocess.Popen([*DIGITS, *flags], stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not all((run_dir / f"member-{k}" / CHECKPOINT_FILE).exists() for k in (1, 2)):
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoints"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    said = " ".join(stderr.split())  # rich wraps lines
    assert process.returncode == 128 + signal.SIGTERM, said
    assert "interrupted: the same command with --resume" in said and "Traceback" not in said
    deadline = time.monotonic() + 30  # the members' processes, in the command's group, end too
    with pytest.raises(ProcessLookupError):
        while time.monotonic() < deadline:
            os.killpg(process.pid, 0)
            time.sleep(0.1)
    assert not (run_dir / "member-3" / CHECKPOINT_FILE).exists()


# --- (b) and (d): corrupt or tampered model files, through the CLI --------------------------------


@pytest.fixture(scope="module")
def test_csv(tmp_path_factory: pytest.TempPathFactory, small_test: DigitSet) -> Path:
    path = tmp_path_factory.mktemp("predict") / "test.csv"
    write_kaggle_csv(path, small_test.images[:20])
    return path


def copy_run(tiny_run: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in (META_FILE, WEIGHTS_FILE):
        shutil.copy(tiny_run / name, folder / name)
    return folder


def assert_one_line_error(result, *fragments: str) -> None:
    """Exit status 1 through ``handles_errors``: one last line "error: ...", naming the file,
    and no traceback (log lines may come before it)."""
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:], result.output
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def tamper_safetensors(path: Path, change: str) -> None:
    state = load_file(path)
    first = next(key for key in state if key.endswith("weight"))
    if change == "wrong-shape":
        state[first] = torch.zeros(3)
    elif change == "missing-tensor":
        del state[first]
    elif change == "extra-tensor":
        state["extra.weight"] = torch.zeros(1)
    save_file(state, path)


def rewrite_bytes(path: Path, change: str) -> None:
    raw = path.read_bytes()
    changed = {
        "empty": b"",
        "truncated": raw[: len(raw) // 2],
        "header-only": raw[:8],
        "huge-header-length": (2**62).to_bytes(8, "little") + raw[8:],
        "garbage-header": raw[:8] + b"\xff" * (len(raw) - 8),
        "not-json": raw.replace(b"{", b"[", 1),
        "random": random.Random(0).randbytes(len(raw)),
    }
    path.write_bytes(changed[change])


SAFETENSORS_CHANGES = ["empty", "truncated", "header-only", "huge-header-length",
                       "garbage-header", "not-json", "random", "wrong-shape", "missing-tensor",
                       "extra-tensor", "directory"]  # fmt: skip


@pytest.mark.parametrize("change", SAFETENSORS_CHANGES)
def test_tampered_weights_name_the_file(tmp_path: Path, tiny_run: Path, test_csv: Path, change):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    weights = run_dir / WEIGHTS_FILE
    if change == "directory":
        weights.unlink()
        weights.mkdir()
    elif change in ("wrong-shape", "missing-tensor", "extra-tensor"):
        tamper_safetensors(weights, change)
    else:
        rewrite_bytes(weights, change)
    result = runner.invoke(app, ["predict", str(run_dir), str(test_csv),
                                 "--out", str(tmp_path / "s.csv")])  # fmt: skip
    assert_one_line_error(result, str(weights))
    assert not (tmp_path / "s.csv").exists()


META_CHANGES = {
    "truncated": lambda meta: json.dumps(meta)[:40],
    "not-utf8": lambda meta: b"\xff\xfe{}",
    "a-list": lambda meta: "[1, 2]",
    "no-model": lambda meta: json.dumps({k: v for k, v in meta.items() if k != "model"}),
    "model-not-a-string": lambda meta: json.dumps(meta | {"model": 5}),
    "other-net": lambda meta: json.dumps(meta | {"model": "mlp"}),
    "classical-model": lambda meta: json.dumps(meta | {"model": "logreg"}),
    "unknown-param": lambda meta: json.dumps(meta | {"params": {"bogus": 1}}),
    "params-a-list": lambda meta: json.dumps(meta | {"params": [1, 2]}),
    "param-wrong-type": lambda meta: json.dumps(meta | {"params": {"widths": "abc"}}),
    "param-negative": lambda meta: json.dumps(meta | {"params": {"widths": [-1, 2, 3]}}),
}


@pytest.mark.parametrize("change", list(META_CHANGES))
def test_tampered_model_json_names_the_file(tmp_path: Path, tiny_run: Path, test_csv: Path, change):
    run_dir = copy_run(tiny_run, tmp_path / "run")
    meta_path = run_dir / META_FILE
    text = META_CHANGES[change](json.loads(meta_path.read_text()))
    meta_path.write_bytes(text if isinstance(text, bytes) else text.encode())
    result = runner.invoke(app, ["predict", str(run_dir), str(test_csv),
                                 "--out", str(tmp_path / "s.csv")])  # fmt: skip
    named = str(meta_path) if change not in ("other-net",) else str(run_dir / WEIGHTS_FILE)
    assert_one_line_error(result, named)


ENSEMBLE_CHANGES = {
    "truncated": '{"members": ["a"',
    "no-members": '{"other": []}',
    "members-a-string": '{"members": "member-1"}',
    "member-not-a-string": '{"members": [1]}',
    "empty": '{"members": []}',
    "a-list": '["member-1"]',
}


@pytest.mark.parametrize("change", list(ENSEMBLE_CHANGES))
def test_tampered_ensemble_json_names_the_file(tmp_path, tiny_run, test_csv, change) -> None:
    ensemble = tmp_path / "ensemble"
    copy_run(tiny_run, ensemble / "member-1")
    (ensemble / ENSEMBLE_FILE).write_text(ENSEMBLE_CHANGES[change])
    result = runner.invoke(app, ["predict", str(ensemble), str(test_csv),
                                 "--out", str(tmp_path / "s.csv")])  # fmt: skip
    assert_one_line_error(result, str(ensemble / ENSEMBLE_FILE))


CHECKPOINT_CHANGES = ["empty", "truncated", "random", "not-a-dict", "missing-key", "wrong-shape",
                      "pickled-object"]  # fmt: skip


class Payload:
    """Stands for code a tampered checkpoint would run: weights_only=True must refuse it."""

    def __reduce__(self):
        return (print, ("executed",))


@pytest.mark.parametrize("change", CHECKPOINT_CHANGES)
def test_corrupt_checkpoint_on_resume_names_the_file(tmp_path, tiny_run, train_csv, change):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    checkpoint = run_dir / CHECKPOINT_FILE
    state = torch.load(checkpoint, weights_only=True)
    if change in ("empty", "truncated", "random"):
        rewrite_bytes(checkpoint, change)
    else:
        replaced = {
            "not-a-dict": [1, 2, 3],
            "missing-key": {k: v for k, v in state.items() if k != "optimizer"},
            "wrong-shape": state | {"model": {k: torch.zeros(1) for k in state["model"]}},
            "pickled-object": state | {"step": Payload()},
        }[change]
        torch.save(replaced, checkpoint)
    result = runner.invoke(app, ["train", "--train", str(train_csv), "--out", str(run_dir),
                                 "--resume"])  # fmt: skip
    assert_one_line_error(result, str(checkpoint))
    assert "executed" not in result.output


def test_load_checkpoint_raises_model_file_error(tmp_path: Path) -> None:
    for damaged in (b"PK\x03\x04 not really a zip", b""):  # torch: RuntimeError, EOFError
        (tmp_path / CHECKPOINT_FILE).write_bytes(damaged)
        with pytest.raises(ModelFileError, match=rf"{CHECKPOINT_FILE}: not a readable checkpoint"):
            load_checkpoint(tmp_path, torch.device("cpu"))
    # Readable, but not ours (weights saved under its name): the keys it lacks are named.
    torch.save({"weight": torch.zeros(2)}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelFileError, match=r"not a checkpoint of digits train \(no model, optim"):
        load_checkpoint(tmp_path, torch.device("cpu"))


@pytest.mark.parametrize(
    ("edit", "named"),
    [({"step": -(10**12)}, "step -1000000000000"), ({"step": "abc"}, "step 'abc'"),
     ({"lr_scale": float("nan")}, "lr_scale nan"), ({"config": "x"}, "config not a dict"),
     ({"config": {}}, "config without seed"), ({"history": "abc"}, "history not a list"),
     ({"history": [1]}, "history not a list of rows"), ({"epoch": True}, "epoch True"),
     ({"lr_scale": -1.0}, "lr_scale -1.0"), ({"elapsed_s": -5.0}, "elapsed_s -5.0"),
     ({"elapsed_s": float("inf")}, "elapsed_s inf"), ({"step": -1}, "step -1"),
     ({"epochs_since_best": -1}, "epochs_since_best -1"),
     ({"stopped_early": "no"}, "stopped_early not a bool"), ({"rows": 5}, "rows not a str"),
     ({"config": {"seed": 0}}, "config without valid_size, batch_size"),
     # Resumed, it had ended in a KeyError's traceback.
     ({"config": {"seed": 0, "valid_size": 0.05, "batch_size": 64, "optimizer": "sgd",
                  "max_memory_gb": 2.0}}, "config without model, widths\\)")],
)  # fmt: skip
def test_a_checkpoint_whose_bookkeeping_training_did_not_write_is_refused(
    tmp_path, tiny_run, edit, named
):
    """A step of -10**12 resumed had trained on for ever at lr 0; a config of {} or a step of
    'abc' had ended in a traceback, a history of 'abc' only after a whole epoch."""
    state = torch.load(tiny_run / CHECKPOINT_FILE, weights_only=True)
    torch.save(state | edit, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ModelFileError, match=rf"not a checkpoint of digits train \({named}"):
        load_checkpoint(tmp_path, torch.device("cpu"))


# --- (c) nothing executes code from a file --------------------------------------------------------


PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve",
                  "marshal"}  # fmt: skip
UNPICKLERS = {"load", "loads", "Unpickler", "open"}  # open: shelve's
EVALUATORS = {"eval", "exec", "builtins.eval", "builtins.exec", "__import__"}


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Lines of ``source`` that could run code from a file: pickle and friends (under any
    alias), torch.load without weights_only=True, numpy.load(allow_pickle=True),
    pandas.read_pickle, eval and exec. Importing pickle for its exception classes is fine."""
    tree = ast.parse(source, filename)
    aliases = set(PICKLE_MODULES)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases |= {a.asname or a.name for a in node.names if a.name in PICKLE_MODULES}
    found = []
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found += [f"{where}: from {node.module} import {a.name}" for a in node.names
                      if a.name in UNPICKLERS or a.name == "*"]  # fmt: skip
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        head, _, tail = name.rpartition(".")
        keywords = {k.arg: k.value for k in node.keywords}
        weights_only = keywords.get("weights_only")
        allow_pickle = keywords.get("allow_pickle")
        if name in EVALUATORS or (head in aliases and tail in UNPICKLERS):
            found.append(f"{where}: {name}()")
        elif name == "torch.load" and not (
            isinstance(weights_only, ast.Constant) and weights_only.value is True
        ):
            found.append(f"{where}: torch.load() without weights_only=True")
        elif name in ("np.load", "numpy.load") and not (
            allow_pickle is None
            or (isinstance(allow_pickle, ast.Constant) and allow_pickle.value is False)
        ):
            found.append(f"{where}: {name}(allow_pickle=...)")
        elif tail == "read_pickle":
            found.append(f"{where}: {name}()")
    return found


def test_the_scanner_finds_each_unsafe_call() -> None:
    unsafe = """
import pickle as p
from joblib import load
p.loads(data)
torch.load(path)
torch.load(path, weights_only=False)
torch.load(path, weights_only=flag)
np.load(path, allow_pickle=True)
pd.read_pickle(path)
eval("1")
exec("x = 1")
"""
    safe = """
import pickle
except pickle.UnpicklingError: pass
torch.load(path, weights_only=True)
np.load(path)
np.load(path, allow_pickle=False)
model.eval()
"""
    assert len(unsafe_calls(unsafe)) == 9
    assert unsafe_calls(safe.replace("except", "try: pass\nexcept")) == []


def test_a_skops_file_naming_a_function_is_refused(tmp_path: Path) -> None:
    """A forest's skops file is loaded only if this installation signed it, and even then only
    if it names allow-listed types: a file crafted to call os.system, signed with the
    installation's key, is refused before anything is instantiated."""
    import skops.io

    from digit_recognizer.models.classical import _sign

    skops.io.dump(Pipeline([("f", FunctionTransformer(func=os.system))]), tmp_path / TRUSTED_FILE)
    signature = _sign((tmp_path / TRUSTED_FILE).read_bytes())
    record = {"path": TRUSTED_FILE, "hmac_sha256": signature, "format": "skops"}
    meta = {"framework": "sklearn", "model": "random-forest", "params": {}, "trusted_file": record}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match=r"names types outside the allow-list: posix.system"):
        load_pipeline(tmp_path)


def test_package_never_unpickles_or_evaluates() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    found = [hit for file in files for hit in unsafe_calls(file.read_text(), str(file))]
    assert found == []
