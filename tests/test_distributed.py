"""Two-process DDP on CPU (gloo), as torchrun would start it, on a small real slice (resume
included); and batch inference on two processes through `digits predict --nproc 2` (torchrun on
this machine)."""

import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from typer.testing import CliRunner

from digit_recognizer import distributed
from digit_recognizer import predict as predict_module
from digit_recognizer.cli import app
from digit_recognizer.data import stream as stream_module
from digit_recognizer.data.images import sheared
from digit_recognizer.data.kaggle_csv import DigitSet, write_kaggle_csv
from digit_recognizer.data.shards import shard_csv
from digit_recognizer.data.stream import ShardStream, piece_slices
from digit_recognizer.distributed import Distributed, init_distributed, run_torchrun
from digit_recognizer.errors import ConfigError
from digit_recognizer.predict import PieceConformer, PredictConfig, predict_csv
from digit_recognizer.train import TrainConfig, train

from .conftest import free_port


def weights_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


class RunStoppedError(Exception):
    """Raised from on_epoch_end to stop a run as a kill would, after a checkpoint."""


def run_rank(rank: int, port: int, data: tuple, run_dir: str, report_dir: str,
             resume: bool = False, stop_after_epoch: int | None = None) -> None:  # fmt: skip
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    torch.set_num_threads(1)
    images, labels, valid_images, valid_labels = data
    config = TrainConfig(epochs=2, batch_size=64, lr=0.02, ddp_timeout_s=60, resume=resume)

    def interrupt(row: dict[str, float]) -> None:
        if row["epoch"] == stop_after_epoch:
            raise RunStoppedError

    try:
        result = train(config, DigitSet(images, labels), DigitSet(valid_images, valid_labels),
                       run_dir, on_epoch_end=interrupt)  # fmt: skip
    except RunStoppedError:
        return
    finally:
        torch.distributed.destroy_process_group()
    report = {"digest": weights_digest(result.model), "history": result.history}
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as handle:
        json.dump(report, handle)


def spawn_ranks(data: tuple, run_dir, report_dir, resume: bool = False,
                stop_after_epoch: int | None = None) -> list[dict]:  # fmt: skip
    """Train on 2 processes; the reports (weights digest, history) of the ranks that finished."""
    mp.spawn(run_rank, nprocs=2, args=(free_port(), data, str(run_dir), str(report_dir), resume,
                                       stop_after_epoch))  # fmt: skip
    paths = [report_dir / f"rank{rank}.json" for rank in (0, 1)]
    return [json.loads(path.read_text()) for path in paths if path.exists()]


@pytest.fixture(scope="module")
def ddp_data(small_train, small_test) -> tuple:
    return (small_train.images[:2048], small_train.labels[:2048],
            small_test.images[:300], small_test.labels[:300])  # fmt: skip


def without_timing(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key != "elapsed_s"} for row in history]


def test_torchruns_variables_place_the_process(monkeypatch):
    # The second machine's second process of four: global rank 3, rank 1 on its machine.
    monkeypatch.delenv("RANK", raising=False)  # run alone: rank 0 of 1
    assert Distributed.from_env() == Distributed(0, 0, 1)
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    assert Distributed.from_env() == Distributed(3, 1, 4)
    assert not Distributed.from_env().is_main_process


def test_under_nohup_torchrun_leaves_sighup_alone():
    """torchrun handles SIGHUP whatever its parent ignores and hands it on to the workers:
    under nohup, closing the terminal had stopped a --nproc run."""
    from torch.distributed.launcher.api import LaunchConfig

    from digit_recognizer.distributed import _nohup_args

    if "signals_to_handle" not in {field.name for field in dataclasses.fields(LaunchConfig)}:
        pytest.skip("torchrun has no --signals-to-handle before torch 2.9")
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        assert _nohup_args() == []
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        assert _nohup_args() == ["--signals-to-handle=SIGTERM,SIGINT,SIGQUIT"]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_a_stray_rank_is_refused_in_one_line(tmp_path, small_csvs):
    """RANK alone (some launchers set it) had crashed on LOCAL_RANK with a traceback."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOCAL_RANK", "WORLD_SIZE")} | {"RANK": "0"}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "digit_recognizer", "train", "--train",
                           str(small_csvs["train"]), "--out", str(tmp_path / "run")],
                          env=env, capture_output=True, text=True)  # fmt: skip
    said = " ".join(done.stderr.split())
    assert done.returncode == 1 and "Traceback" not in said, said
    assert "RANK is set (0) without LOCAL_RANK and WORLD_SIZE: torchrun sets all three" in said


def test_a_stray_rank_does_not_make_the_command_a_torchrun_worker():
    """Only torchrun's three variables do: with RANK alone, a command's unexpected error had
    ended its traceback in the worker's own refusal of the stray RANK, not in the error."""
    crash = (
        "import runpy, sys\nfrom digit_recognizer.models import registry\n"
        "registry.available = lambda *args: 1 / 0\nsys.argv = ['digits', 'models']\n"
        "runpy.run_module('digit_recognizer', run_name='__main__', alter_sys=True)\n"
    )
    env = {key: value for key, value in os.environ.items()
           if key not in ("LOCAL_RANK", "WORLD_SIZE")} | {"RANK": "0"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", crash], env=env, capture_output=True, text=True)
    assert done.stderr.splitlines()[-1] == "ZeroDivisionError: division by zero", done.stderr


def test_a_rank_left_waiting_by_the_others_says_so_in_one_line(monkeypatch):
    """gloo's timeout is a plain RuntimeError from deep in a collective (its message as torch
    2.13 words it): it had ended each waiting process in a page of traceback. Other errors
    keep theirs."""
    monkeypatch.setattr(distributed, "PEER_FAILURE_GRACE_S", 0)
    # The second machine's second process: its global rank, not its place on the machine.
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    gloo = RuntimeError("[/__w/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78]"
                        " Timed out waiting 300000ms for recv operation to complete")  # fmt: skip
    with pytest.raises(SystemExit) as stop, distributed.torchrun_worker():
        raise gloo
    assert str(stop.value.code).startswith("error: rank 3: no answer from the job's other ")
    assert "300000ms" in stop.value.code and "ddp_timeout_s" in stop.value.code
    bug = RuntimeError("shapes do not match")
    with pytest.raises(RuntimeError) as raised, distributed.torchrun_worker():
        raise bug
    assert raised.value is bug


def test_two_ranks_end_with_identical_weights_and_one_run_directory(tmp_path, ddp_data):
    run_dir = tmp_path / "run"
    reports = spawn_ranks(ddp_data, run_dir, tmp_path)
    assert reports[0]["digest"] == reports[1]["digest"]
    # metrics reduced across ranks, so every rank takes the same decisions
    assert without_timing(reports[0]["history"]) == without_timing(reports[1]["history"])
    assert reports[0]["history"][-1]["valid_accuracy"] > 0.8
    assert sorted(path.name for path in run_dir.iterdir()) == [
        "checkpoint.pt", "config.toml", "history.csv", "model.json", "model.safetensors"
    ]  # fmt: skip


def test_an_interrupted_ddp_run_resumes_to_the_same_weights(tmp_path, ddp_data):
    straight = spawn_ranks(ddp_data, tmp_path / "straight", tmp_path)
    run_dir, reports = tmp_path / "interrupted", tmp_path / "reports"
    reports.mkdir()
    assert spawn_ranks(ddp_data, run_dir, reports, stop_after_epoch=1) == []  # both stopped
    resumed = spawn_ranks(ddp_data, run_dir, reports, resume=True)
    assert resumed[0]["digest"] == resumed[1]["digest"] == straight[0]["digest"]
    assert without_timing(resumed[0]["history"]) == without_timing(straight[0]["history"])


def test_predict_on_two_processes_matches_one(tmp_path, capfd, tiny_run, small_csvs) -> None:
    shard_csv(small_csvs["test"], tmp_path / "shards", parts=3)
    predict_csv([tiny_run], small_csvs["test"], tmp_path / "one.csv")
    args = ["predict", str(tiny_run), str(tmp_path / "shards"), "--out", str(tmp_path / "two.csv")]
    result = CliRunner().invoke(app, [*args, "--nproc", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    # Said by rank 0 alone: the command had said it again ("wrote ... with 2 processes").
    assert (result.output + capfd.readouterr().out).count("wrote ") == 1


# Pieces and samples small enough for a file of 100 rows to be judged across two processes' shares.
SMALL_PIECE, SMALL_SAMPLE = 64, 32


def conform_share(rank: int, port: int, csv: str, report_dir: str) -> None:
    """Process ``rank``'s share of ``csv`` conformed as predict_stream's processes conform theirs,
    in pieces of SMALL_PIECE rows judged on SMALL_SAMPLE; saved with the shear judged."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})  # fmt: skip
    torch.set_num_threads(1)
    # This process's own interpreter: its modules' constants are its alone.
    stream_module.STREAM_ROWS, predict_module.JUDGED_SAMPLE = SMALL_PIECE, SMALL_SAMPLE
    _, device = init_distributed("cpu", 60)
    try:
        share = ShardStream(csv, SMALL_PIECE, shuffle=False)
        conformer = PieceConformer(PredictConfig(), None, device,
                                   (share.first_row, share.manifest.n_rows))  # fmt: skip
        pieces = [conformer(images.numpy()) for images, _ in share]
    finally:
        torch.distributed.destroy_process_group()
    np.savez(os.path.join(report_dir, f"rank{rank}.npz"), images=np.concatenate(pieces),
             shear=conformer.shear)  # fmt: skip


def test_processes_sharing_a_file_conform_it_as_one_process_does(tmp_path, small_test,
                                                                  monkeypatch) -> None:  # fmt: skip
    """Each process judges the file on its rows among the file's first piece's: each had judged
    a sample of its own first piece, and a leaning file was sheared by another amount than one
    process shears it (and its ink's side voted by other rows)."""
    rows = 255 - sheared(small_test.images[:100], 0.5)  # dark on light, leaning far forward
    write_kaggle_csv(tmp_path / "leaning.csv", rows)
    mp.spawn(conform_share, nprocs=2, args=(free_port(), str(tmp_path / "leaning.csv"),
                                            str(tmp_path)))  # fmt: skip
    shares = [np.load(tmp_path / f"rank{rank}.npz") for rank in (0, 1)]
    monkeypatch.setattr(stream_module, "STREAM_ROWS", SMALL_PIECE)
    monkeypatch.setattr(predict_module, "JUDGED_SAMPLE", SMALL_SAMPLE)
    conformer = PieceConformer(PredictConfig())
    alone = np.concatenate([conformer(rows[piece]) for piece in piece_slices(len(rows))])
    assert conformer.shear != 0 and [share["shear"] for share in shares] == [conformer.shear] * 2
    np.testing.assert_array_equal(np.concatenate([share["images"] for share in shares]), alone)


def test_the_main_job_trains_on_two_processes(tmp_path, small_csvs) -> None:
    """`digits run --nproc 2`: torchrun's processes train the model; the command predicts with it
    and reports it as it does a run of one process (`--nproc` had been `train`'s alone)."""
    run_dir = tmp_path / "run"
    args = ["run", "--train", str(small_csvs["train"]), "--test", str(small_csvs["test"]),
            "--out", str(run_dir), "--model", "mlp", "--epochs", "1", "--time-budget", "0",
            "--nproc", "2"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    validation = json.loads((run_dir / "metrics.json").read_text())["validation"]
    assert validation["accuracy"] > 0.8 and f"{validation['accuracy']:.4f}" in result.output
    assert len((run_dir / "submission.csv").read_text().splitlines()) == 1 + 1000
    refused = CliRunner().invoke(app, [*args[:6], str(tmp_path / "best"), "--preset", "best",
                                       "--nproc", "2"])  # fmt: skip
    assert refused.exit_code == 1 and "--nproc trains one model" in refused.output
    assert not (tmp_path / "best").exists()


def test_a_failing_rank_stops_distributed_predict_with_its_error(tmp_path, capfd, tiny_run,
                                                                 small_csvs) -> None:  # fmt: skip
    shard_csv(small_csvs["test"], tmp_path / "shards", parts=2)
    bad = tmp_path / "shards" / "part-00001.csv"  # the second shard: rank 1's rows
    lines = bad.read_text().splitlines(keepends=True)
    lines[9] = lines[9].replace("0,", "x,", 1)
    bad.write_text("".join(lines))
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(tmp_path / "shards"),
                                      "--out", str(out), "--nproc", "2"])  # fmt: skip
    assert result.exit_code == 1
    assert "`python -m digit_recognizer predict` failed in its job of 2 processes" in result.output
    err = capfd.readouterr().err
    assert f"{bad}, line 10, column pixel" in err  # the rank's own message
    assert "Traceback" not in err and "ChildFailedError" not in err  # not torchrun's
    assert not out.exists()


def test_ctrl_c_stops_torchrun_with_no_traceback(tmp_path):
    """Ctrl-C reaches the whole process group: the workers stop, then torchrun, which says so by
    its exit status alone, and the command that launched it raises KeyboardInterrupt."""
    (tmp_path / "sleeper.py").write_text(
        "import pathlib, signal, sys, time\n"
        "pathlib.Path(sys.argv[1]).touch()\n"
        "try:\n    time.sleep(600)\nexcept KeyboardInterrupt:\n"
        "    signal.signal(signal.SIGINT, signal.SIG_IGN)  # torchrun hands Ctrl-C on again\n"
        "    time.sleep(1)  # its last checkpoint, say\n"
        "    pathlib.Path(sys.argv[1]).with_name('stopped').touch()\n"
        "    sys.exit(130)\n"
    )
    started = tmp_path / "started"
    launch = (
        "import sys; from digit_recognizer.distributed import run_torchrun\n"
        f"try:\n    run_torchrun(1, 'sleeper', [{str(started)!r}])\n"
        "except KeyboardInterrupt:\n    sys.exit(130)\n"
    )
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen([sys.executable, "-c", launch], env=env, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not started.exists():
        assert time.monotonic() < deadline and parent.poll() is None, "the worker did not start"
        time.sleep(0.1)
    os.killpg(parent.pid, signal.SIGINT)
    _, err = parent.communicate(timeout=60)
    assert parent.returncode == 130
    assert "Traceback" not in err
    assert (tmp_path / "stopped").exists(), "the worker was stopped before it had stopped itself"


def test_torchrun_ended_by_sighup_is_an_interruption_not_a_failure(monkeypatch):
    """torchrun exits 128 + the signal that stopped it: SIGHUP's 129 (its terminal closed) had
    been reported as a job that failed, "see the log above"."""

    class HungUp:
        def __init__(self, *args, **kwargs):
            pass

        def wait(self, timeout=None):
            return 128 + signal.SIGHUP

        poll = wait

    monkeypatch.setattr(distributed.subprocess, "Popen", HungUp)
    with pytest.raises(KeyboardInterrupt, match="were stopped"):
        run_torchrun(2, "json.tool", ["--help"])


@pytest.fixture
def temporary_folders(tmp_path, monkeypatch) -> Path:
    """A folder of its own for the temporary folders of this process and those it starts."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_torchrun_leaves_no_files_and_no_orphans_behind(tmp_path, temporary_folders):
    """Its log folder is ours and removed; SIGTERM to the launching process (a scheduler, `kill`)
    stops torchrun and its workers instead of leaving them running."""
    run_torchrun(1, "json.tool", ["--help"])
    assert list(temporary_folders.iterdir()) == []
    parent, worker = launch_sleeping_worker(tmp_path)
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=60)
    assert ends(worker), "the worker outlived its launcher"
    assert list(temporary_folders.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="prctl(PR_SET_PDEATHSIG) is Linux's")
def test_a_command_killed_outright_takes_torchrun_and_its_workers_with_it(
    tmp_path, temporary_folders
):
    """SIGKILL (the OOM killer, `kill -9`) leaves the command no moment to stop torchrun: its
    workers had trained on as orphans, holding the run's lock against the --resume. Nor to
    remove torchrun's log folder, which had stayed in /tmp for good: the next launch does."""
    parent, worker = launch_sleeping_worker(tmp_path)
    parent.kill()
    parent.wait(timeout=60)
    assert ends(worker), "the worker outlived the command"
    [left] = temporary_folders.iterdir()
    assert left.name.startswith("digits-torchrun-")
    deadline = time.monotonic() + 30
    while any(str(left) in command for command in command_lines()):  # the launcher, ending
        assert time.monotonic() < deadline, "torchrun's launcher outlived the command"
        time.sleep(0.1)
    run_torchrun(1, "json.tool", ["--help"])
    assert list(temporary_folders.iterdir()) == []


def command_lines() -> list[str]:
    """The command lines of this machine's processes (Linux's /proc)."""
    lines = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            lines.append(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return lines


def launch_sleeping_worker(tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """A process calling run_torchrun for one worker that sleeps, once that worker runs: the
    process, and the worker's folder in /proc."""
    (tmp_path / "sleeper.py").write_text(
        "import os, pathlib, sys, time\n"
        "pathlib.Path(sys.argv[1]).write_text(str(os.getpid()))\n"
        "time.sleep(600)\n"
    )
    worker_pid = tmp_path / "worker.pid"
    launch = (
        "import sys; from digit_recognizer.distributed import run_torchrun; "
        f"run_torchrun(1, 'sleeper', [{str(worker_pid)!r}])"
    )
    env = os.environ | {"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    parent = subprocess.Popen([sys.executable, "-c", launch], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not worker_pid.exists() or not worker_pid.read_text():
        assert time.monotonic() < deadline and parent.poll() is None, "the worker did not start"
        time.sleep(0.1)
    return parent, Path(f"/proc/{worker_pid.read_text()}")


def ends(process: Path, within_s: float = 30) -> bool:
    """Whether the process of a /proc folder ends (is gone, or a zombie) within ``within_s``."""

    def ended() -> bool:
        try:
            status = (process / "status").read_text()
        except OSError:
            return True
        return any(line.startswith("State:") and "zombie" in line for line in status.splitlines())

    deadline = time.monotonic() + within_s
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.1)
    return ended()


def test_ddp_timeout_is_refused_at_zero_and_taken_at_its_longest():
    """The range's two ends: no timeout at all is no answer in time, and the longest one
    (31 years) is still one torch's process groups count."""
    with pytest.raises(ConfigError, match=r"ddp_timeout_s must be in \(0, 1e\+09\] seconds, got 0"):
        distributed.check_ddp_timeout(0)
    distributed.check_ddp_timeout(distributed.MAX_DDP_TIMEOUT_S)


def test_the_main_process_is_the_jobs_rank_0_not_each_machines(monkeypatch):
    """The second machine's first process is rank 0 on its machine alone: were it a main
    process too, two would write the run's files."""
    for name, value in {"RANK": "2", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    assert not Distributed.from_env().is_main_process


@pytest.mark.parametrize(("device_name", "backend"), [("cpu", "gloo"), ("cuda", "nccl")])
def test_a_rank_joins_its_group_on_its_machines_gpu_with_the_jobs_timeout(
    monkeypatch, device_name, backend
):
    """NCCL on its own GPU (its place on the machine: the machine's second process of its
    second, cuda:1), gloo on CPU; a rank whose peers died fails after ddp_timeout_s."""
    for name, value in {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(name, value)
    joined, gpus_set = [], []
    monkeypatch.setattr(distributed, "resolve_device", torch.device)
    monkeypatch.setattr(distributed.torch.cuda, "set_device", gpus_set.append)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(
        distributed.dist, "init_process_group", lambda **kwargs: joined.append(kwargs)
    )
    dist_env, device = distributed.init_distributed(device_name, 42.0)
    assert dist_env == Distributed(3, 1, 4)
    expected = torch.device("cuda", 1) if device_name == "cuda" else torch.device("cpu")
    assert device == expected and gpus_set == ([expected] if device_name == "cuda" else [])
    assert joined == [{"backend": backend, "timeout": datetime.timedelta(seconds=42.0)}]


def test_a_torchrun_worker_leaves_its_process_group_closed(monkeypatch):
    """A gloo group left open can abort the process in its teardown (SIGABRT) after the work
    is done, failing a job that succeeded: closed whether the command ends well or not."""
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"}.items():
        monkeypatch.setenv(name, value)
    for failure in (None, ValueError("a malformed row")):
        store = torch.distributed.HashStore()
        with contextlib.suppress(ValueError), distributed.torchrun_worker():
            torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
            if failure:
                raise failure
        assert not torch.distributed.is_initialized()


def test_a_process_alone_fails_without_waiting_for_peers(monkeypatch):
    """The wait for torchrun to stop the other ranks is for a job of several: one process
    alone (no torchrun, or --nproc 1) has no peers' tracebacks to wait out."""
    waits = []
    monkeypatch.setattr(distributed.time, "sleep", waits.append)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError), distributed.torchrun_worker():
        raise ValueError("a malformed row")
    assert waits == []
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError), distributed.torchrun_worker():
        raise ValueError("a malformed row")
    assert waits == [distributed.PEER_FAILURE_GRACE_S]


class FinishedLauncher:
    """subprocess.Popen for torchrun's launcher, ended at once with ``returncode``."""

    returncode = 0
    launched_envs: ClassVar[list[dict]] = []

    def __init__(self, args, env):
        self.launched_envs.append(env)

    def wait(self, timeout=None):
        return self.returncode

    poll = wait


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_torchrun_ended_by_a_stop_signal_is_an_interruption(monkeypatch, signum):
    """As SIGHUP's: Ctrl-C or a scheduler's SIGTERM to torchrun alone is no failed job."""
    monkeypatch.setattr(FinishedLauncher, "returncode", 128 + signum)
    monkeypatch.setattr(distributed.subprocess, "Popen", FinishedLauncher)
    with pytest.raises(
        KeyboardInterrupt, match=r"^the 2 processes of `python -m json\.tool --help` were stopped$"
    ):
        run_torchrun(2, "json.tool", ["--help"])


def test_torchrun_shares_the_cpus_threads_among_its_processes(monkeypatch):
    """Each process gets its share of the threads (torchrun would give each one), one at
    least; an OMP_NUM_THREADS of the user's is kept."""
    monkeypatch.setattr(FinishedLauncher, "launched_envs", [])
    monkeypatch.setattr(distributed.subprocess, "Popen", FinishedLauncher)
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run_torchrun(2, "json.tool", ["--help"])
    run_torchrun(16, "json.tool", ["--help"])
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    run_torchrun(2, "json.tool", ["--help"])
    assert [env["OMP_NUM_THREADS"] for env in FinishedLauncher.launched_envs] == ["4", "1", "3"]


def test_all_reduce_combines_the_ranks_values_by_the_callers_op(monkeypatch):
    """The time budget takes the slowest rank's seconds (MAX): summed, a job of several
    processes would stop that many times too early. Alone, the value is its own."""
    alone = torch.tensor([3.0])
    assert distributed.all_reduce(alone, torch.distributed.ReduceOp.MAX) is alone
    assert alone.tolist() == [3.0]
    peers_value = torch.tensor([5.0])

    def reduce_with_a_peer(tensor, op):
        combine = torch.maximum if op == torch.distributed.ReduceOp.MAX else torch.add
        tensor.copy_(combine(tensor, peers_value))

    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "all_reduce", reduce_with_a_peer)
    assert distributed.all_reduce(torch.tensor([3.0]), torch.distributed.ReduceOp.MAX).item() == 5
    assert distributed.all_reduce(torch.tensor([3.0])).item() == 8


def test_torchruns_processes_all_read_the_jobs_settings(monkeypatch):
    """The command's resolved settings reach every process through one file (--config): each
    would otherwise run with its defaults (another model, another number of epochs)."""
    settings_read = []

    class Launcher(FinishedLauncher):
        def __init__(self, args, env):
            settings_read.append(Path(args[args.index("--config") + 1]).read_text())

    monkeypatch.setattr(distributed.subprocess, "Popen", Launcher)
    run_torchrun(2, "digit_recognizer", ["train"], TrainConfig(model="mlp", epochs=3))
    [settings] = settings_read
    assert 'model = "mlp"' in settings and "epochs = 3" in settings
