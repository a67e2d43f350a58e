"""Atomic file output: a writer that fails part-way leaves the old file as it was."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from digit_recognizer import fileio
from digit_recognizer.errors import OutputError
from digit_recognizer.fileio import atomic_path, check_can_write, locked_dir, write_text


def test_the_rename_is_synced_to_disk_with_the_file(tmp_path: Path, monkeypatch) -> None:
    """The file is flushed before its rename, and the folder after it: a power cut could
    otherwise bring back the old file, or none, under the name."""
    target = tmp_path / "model.json"
    target.write_text("old")
    synced = []

    def spy(fd: int) -> None:
        is_folder = os.path.samestat(os.fstat(fd), tmp_path.stat())
        synced.append(("folder" if is_folder else "file", target.read_text()))

    monkeypatch.setattr(os, "fsync", spy)
    write_text(target, "new")
    assert synced == [("file", "old"), ("folder", "new")]


def test_a_writer_that_fails_leaves_the_old_file_whole_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    # A crash mid-write (a full disk, a bug in the writer) must not tear the last good result:
    # the half-written bytes go to a temporary file, which is removed.
    target = tmp_path / "metrics.json"
    target.write_bytes(b'{"accuracy": 0.99}\n')
    with pytest.raises(RuntimeError, match="writer failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b'{"accur')
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b'{"accuracy": 0.99}\n'
    assert [path.name for path in tmp_path.iterdir()] == ["metrics.json"]


def test_a_device_is_not_replaced_by_the_file_written_over_it(tmp_path: Path) -> None:
    # Writing atomically renames a new file over the target: /dev/null itself would go.
    with (
        pytest.raises(OutputError, match="/dev/null: not a regular file"),
        atomic_path("/dev/null"),
    ):
        pass
    assert Path("/dev/null").is_char_device()


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm")
def test_a_file_in_dev_shm_is_written_as_any_other(tmp_path: Path) -> None:
    """/dev/shm holds memory-backed files, not devices: refusing all of /dev had refused them."""
    import tempfile

    with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
        write_text(Path(folder) / "submission.csv", "ImageId,Label\n")
        assert (Path(folder) / "submission.csv").read_text() == "ImageId,Label\n"


def test_a_source_is_recorded_by_its_absolute_path(tmp_path: Path, monkeypatch) -> None:
    """metrics.json and compare.json name their data wherever they are read from, not relative
    to the folder the command ran in."""
    from digit_recognizer.fileio import sha256_file, source_record

    monkeypatch.chdir(tmp_path)
    Path("train.csv").write_text("label\n")
    assert source_record("train", Path("train.csv")) == {
        "train_csv": str(tmp_path.resolve() / "train.csv"),
        "train_sha256": sha256_file(tmp_path / "train.csv"),
    }
    assert source_record("test", None) == {"test_csv": None, "test_sha256": None}


def test_a_dash_for_stdout_is_refused_not_written_as_a_file_so_named(
    tmp_path: Path, monkeypatch
) -> None:
    """`digits predict RUN test.csv --out -` had written a file named "-", nothing to stdout."""
    monkeypatch.chdir(tmp_path)
    refused = r"^output path '-': writing to standard output is not supported .*; give a file path$"
    with pytest.raises(OutputError, match=refused), atomic_path("-"):
        pass
    assert not list(tmp_path.iterdir())


def test_the_check_before_the_work_refuses_what_the_write_would(tmp_path: Path) -> None:
    """`digits export RUN --out -` (or a link to stdout) had been refused only once exported."""
    (tmp_path / "stdout").symlink_to("/proc/self/fd/1")
    for path in ("-", "/dev/stdout", tmp_path / "stdout"):
        with pytest.raises(OutputError, match=r"stdout|standard output"):
            check_can_write(path)


def test_a_link_to_stdout_is_refused_and_a_link_to_a_file_stays_a_link(tmp_path: Path) -> None:
    """`--out /dev/stdout > file`: stdout is then a link to that file, and the rename had
    replaced the link (as root, /dev/stdout itself)."""
    to_stdout = tmp_path / "stdout"
    to_stdout.symlink_to("/proc/self/fd/1")
    with pytest.raises(OutputError, match="not a regular file"), atomic_path(to_stdout):
        pass
    assert to_stdout.is_symlink()
    # Reached through a folder's link, or by "..", as the kernel follows them.
    (tmp_path / "fd").symlink_to("/proc/self/fd")
    depth = len(tmp_path.parts) - 1
    for path in (tmp_path / "fd" / "1", Path(str(tmp_path) + "/.." * depth + "/proc/self/fd/1")):
        with pytest.raises(OutputError, match="not a regular file"), atomic_path(path):
            pass
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    with (
        pytest.raises(OutputError, match="loop1: cannot be followed"),
        atomic_path(tmp_path / "loop1"),
    ):
        pass
    target, link = tmp_path / "target.csv", tmp_path / "link.csv"
    target.write_text("old")
    link.symlink_to(target)
    write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_a_read_only_file_is_refused_and_a_files_mode_is_kept(tmp_path: Path) -> None:
    """The rename had replaced a read-only file, and every file came out 0644 (root ignores
    a mode, so the check is on the mode bits, not on access)."""
    locked, private = tmp_path / "locked.csv", tmp_path / "private.csv"
    setuid = tmp_path / "setuid"
    for path, mode in ((locked, 0o444), (private, 0o640), (setuid, 0o4755)):
        path.write_text("old")
        path.chmod(mode)
    with pytest.raises(OutputError, match=r"read-only \(mode 0444\)"):
        write_text(locked, "new")
    assert locked.read_text() == "old"
    write_text(private, "new")
    assert private.read_text() == "new" and private.stat().st_mode & 0o777 == 0o640
    write_text(setuid, "new")  # permission bits only: a rewrite drops setuid, as write() does
    assert setuid.stat().st_mode & 0o7777 == 0o755


def test_write_text_replaces_the_file_rather_than_rewrite_it_in_place(tmp_path: Path) -> None:
    """Rewritten in place, a reader holding the file open read the new (or torn) text."""
    path = tmp_path / "metrics.json"
    write_text(path, "old")
    with open(path) as reader:
        write_text(path, "new text")
        assert reader.read() == "old"
    assert path.read_text() == "new text"


def test_a_path_that_cannot_be_written_is_refused_before_the_work(tmp_path, tiny_run, small_csvs,
                                                                  monkeypatch):  # fmt: skip
    """`digits predict ... --out afile/sub.csv` (or --out a folder) had predicted every row,
    then failed."""
    from digit_recognizer import predict as predict_module

    (tmp_path / "afile").write_text("x")
    assert check_can_write(tmp_path / "new" / "deeper" / "sub.csv").name == "sub.csv"
    with pytest.raises(OutputError, match="a folder, where a file is to be written"):
        check_can_write(tmp_path)
    monkeypatch.setattr(predict_module.Predictor, "load", None)  # never reached
    with pytest.raises(OutputError, match=r"afile/sub\.csv: cannot be written: .*afile is a file"):
        predict_module.predict_source(
            [tiny_run], small_csvs["test"], tmp_path / "afile" / "sub.csv"
        )


def test_a_read_only_file_system_is_named_as_such(tmp_path, monkeypatch):
    """A read-only mount (a container's, a read-only home) had been called 'no permission',
    which sends one to chmod a folder that no chmod opens."""
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    for flag, why in ((os.ST_RDONLY, "read-only file system"), (0, "no permission to write")):
        monkeypatch.setattr(os, "statvfs", lambda path, flag=flag: SimpleNamespace(f_flag=flag))
        with pytest.raises(OutputError, match=f"out.csv: cannot be written: {why} in {tmp_path}$"):
            check_can_write(tmp_path / "out.csv")


def test_a_full_disk_is_one_line_naming_the_file_whatever_the_writer_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save on a full disk raises RuntimeError ("unexpected pos ..."), safetensors its own
    error, Pillow an OSError naming no file: each had ended in a page of traceback."""
    import errno
    import shutil

    target = tmp_path / "checkpoint.pt"
    no_room = OSError(errno.ENOSPC, "No space left on device")  # as Pillow raises it: no file
    unnamed = OSError(errno.EIO, "Input/output error")
    for raised, said in ((no_room, "cannot be written: no space left on the device"),
                         (unnamed, "cannot be written (Input/output error)")):  # fmt: skip
        with (
            pytest.raises(OutputError, match=rf"^{re.escape(f'{target}: {said}')}"),
            atomic_path(target),
        ):
            raise raised
    bug = RuntimeError("unexpected pos 895424 vs 895320")
    with pytest.raises(RuntimeError) as kept, atomic_path(target):
        raise bug
    assert kept.value is bug  # with room on the disk: a bug's, its traceback kept
    full = shutil.disk_usage(tmp_path)._replace(free=4096)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    with pytest.raises(OutputError, match="no space left on the device"), atomic_path(target):
        raise bug
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    """The pid of a process that has ended: what its temporary files are named with is a
    killed writer's."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(ended.stdout)


def test_a_lock_taken_clears_what_a_killed_writer_left(tmp_path: Path) -> None:
    """Only that: a live writer's temporary file (`digits report` beside a training) and a
    user's own are left alone; one of this process's pid that it is not writing is a killed
    run's (a restarted container reuses pids)."""
    dead = _dead_pid()
    run = tmp_path / "run"
    run.mkdir()
    left = [f".checkpoint.pt.{dead}-a8f2q0zz.tmp", f".history.csv.{os.getpid()}-b7d1k2xx.tmp"]
    kept = [f".report.html.{os.getppid()}-k3j9x1yy.tmp", ".backup.2024-01.tmp", "checkpoint.pt"]
    for name in [*left, *kept]:
        (run / name).write_bytes(b"bytes")
    ahead = time.time() + 30  # a clock set back since the kill: still the killed run's
    os.utime(run / left[0], (ahead, ahead))
    (tmp_path / "link").symlink_to(run)  # the lock taken through a link, the file written not
    with atomic_path(run / "metrics.json") as writing:  # this process's, being written
        assert writing.name.startswith(f".metrics.json.{os.getpid()}-")
        writing.write_text("{}")
        with locked_dir(tmp_path / "link"):
            assert sorted(path.name for path in run.iterdir()) == sorted(
                [".lock", writing.name, *kept])  # fmt: skip


def test_the_next_write_of_a_file_clears_what_a_killed_write_of_it_left(tmp_path: Path) -> None:
    """A killed `digits predict --out sub.csv` (no locked folder around it) had left its
    temporary file for good. Once it is old enough to be no live writer's on another machine,
    the next write of the file removes it; another file's, and a fresh one, stay."""
    dead = _dead_pid()
    killed, fresh, other = (tmp_path / f".sub.csv.{dead}-a8f2q0zz.tmp",
                            tmp_path / f".sub.csv.{dead}-b7d1k2xx.tmp",
                            tmp_path / f".other.csv.{dead}-c6e3m4ww.tmp")  # fmt: skip
    for path in (killed, fresh, other):
        path.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    for path in (killed, other):
        os.utime(path, (hour_ago, hour_ago))
    write_text(tmp_path / "sub.csv", "ImageId,Label\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        ["sub.csv", fresh.name, other.name])  # fmt: skip


@pytest.mark.parametrize(
    ("name", "cut"),
    [("a" * 251 + ".csv", "a" * 233), ("é" * 127, "é" * 116), ("字" * 85, "字" * 77)],
)
def test_a_name_of_up_to_255_bytes_is_written_and_clears_what_a_killed_write_left(
    tmp_path: Path, name: str, cut: str
) -> None:
    """A file named over ~233 bytes, which the file system takes up to 255, had been refused:
    its temporary file's name, 22 bytes longer, was too long ("File name too long"). That name
    keeps the file's cut at a whole UTF-8 character, and the next write still removes what a
    killed writer of the file left."""
    killed = tmp_path / f".{cut}.{_dead_pid()}-a8f2q0zz.tmp"
    killed.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(killed, (hour_ago, hour_ago))
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.startswith(f".{cut}.{os.getpid()}-")
        assert len(tmp.name.encode()) <= fileio.MAX_NAME_BYTES
        tmp.write_text("ImageId,Label\n")
    assert [path.name for path in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "ImageId,Label\n"


@pytest.mark.parametrize("name", ["a" * 233, os.fsdecode(b"\xb5" * 240)])
def test_a_name_ending_at_the_cut_or_no_utf8_up_to_it_is_written(tmp_path: Path, name: str) -> None:
    """The cut steps back to a UTF-8 character's first byte, and stops at either end of the
    name: one exactly as long as its temporary file's name keeps (233 bytes), and one that is
    no UTF-8 whose bytes all look like the middle of a character (Latin-1's 'µ', 0xB5), are
    written, not refused for reading past them; the second keeps all but 3 of its 233 in its
    temporary file's name, where it had been cut to nothing (its leftovers then matched no
    writer's pattern, and stayed)."""
    with atomic_path(tmp_path / name) as tmp:
        assert len(os.fsencode(tmp.name)) <= fileio.MAX_NAME_BYTES
        assert tmp.name.startswith(f".{name[:230]}")
        tmp.write_text("ImageId,Label\n")
    assert [path.name for path in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "ImageId,Label\n"


def test_a_long_name_clears_a_killed_write_of_a_name_alike_up_to_the_cut_and_no_live_one(
    tmp_path: Path,
) -> None:
    """Names alike up to the cut share the start of their temporary files' names: writing one
    removes what a killed writer of the other left, which is no one's, and never what a live
    writer of it, this process or another, is writing."""
    alike, hour_ago = "d" * 240, time.time() - 3600
    killed = tmp_path / f".{'d' * 233}.{_dead_pid()}-a8f2q0zz.tmp"
    elsewhere = tmp_path / f".{'d' * 233}.{os.getppid()}-k3j9x1yy.tmp"
    with atomic_path(tmp_path / f"{alike}-second.csv") as writing:  # this process's, being written
        writing.write_text("second")
        for path in (killed, elsewhere, writing):
            path.write_bytes(b"partial")
            os.utime(path, (hour_ago, hour_ago))
        write_text(tmp_path / f"{alike}-first.csv", "first")
        assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
            [f"{alike}-first.csv", writing.name, elsewhere.name])  # fmt: skip


def test_a_run_refused_in_a_folder_it_made_leaves_no_folder(tmp_path: Path) -> None:
    """`digits train --valid-size 0 --patience 3 --out X`, refused once the data was read, had
    left X holding a lone .lock; a folder that was there, or that got files, stays."""
    with pytest.raises(ValueError), locked_dir(tmp_path / "refused"):
        raise ValueError("settings refused")
    with locked_dir(tmp_path / "kept") as kept:
        (kept / "model.json").write_text("{}")
    (tmp_path / "there").mkdir()
    with locked_dir(tmp_path / "there"):
        pass
    # The folders made above it go too (`--out new/exp/run` had left new/exp), but for one that
    # got another file meanwhile: the refusal is still what is raised.
    with pytest.raises(ValueError), locked_dir(tmp_path / "new" / "exp" / "run"):
        raise ValueError("settings refused")
    with pytest.raises(ValueError), locked_dir(tmp_path / "shared" / "exp" / "run"):
        (tmp_path / "shared" / "notes.txt").write_text("another process's")
        raise ValueError("settings refused")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept", "shared", "there"]
    assert [path.name for path in (tmp_path / "shared").iterdir()] == ["notes.txt"]


def test_a_lock_whose_folder_a_refused_first_command_removed_is_taken_anew(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second command that opened DIR/.lock just before a refused first one removed the
    folder it made had locked a removed file, and written into a removed folder."""
    run = tmp_path / "run"
    lock_or_refuse = fileio._lock_or_refuse
    removals = []

    def first_command_ends_between_open_and_lock(folder: Path, *args: object) -> None:
        if not removals:  # the first command, refused, removes its folder as it holds the lock
            removals.append(folder)
            shutil.rmtree(folder)
        lock_or_refuse(folder, *args)

    monkeypatch.setattr(fileio, "_lock_or_refuse", first_command_ends_between_open_and_lock)
    with locked_dir(run) as folder:
        (folder / "model.json").write_text("{}")
    assert removals == [run]
    assert (run / "model.json").read_text() == "{}"


def test_a_lock_taken_on_a_full_disk_names_the_folder_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the holder's pid was the first write of `digits train`, `run` and `data shard`:
    on a full disk it had ended in "error: No space left on device", naming no path, and had
    left the run folder it made holding a lone .lock; then it named that .lock, which for
    `data shard DIR` was DIR/.lock, a file nothing had tried to write."""
    import errno

    def no_room(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", no_room)
    run = tmp_path / "new" / "run"
    said = f"{run}: cannot be written: no space left on the device"
    with pytest.raises(OutputError, match=f"^{re.escape(said)}"), locked_dir(run):
        pytest.fail("the lock was taken with no room to name its holder")
    assert list(tmp_path.iterdir()) == []


def test_no_room_is_told_by_errno_or_by_the_writers_own_words_with_the_disk_not_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A quota, a system speaking another language, safetensors' Rust message: the disk's free
    space does not show the first, and the other two name no errno a check could read."""
    import errno
    import shutil
    from types import SimpleNamespace

    target = tmp_path / "model.safetensors"
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=10 << 30))
    for raised in (OSError(errno.EDQUOT, "Disk quota exceeded"),
                   OSError(errno.ENOSPC, "Espace insuffisant sur le disque"),
                   Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                             'message: "No space left on device" })')):  # fmt: skip
        with pytest.raises(OutputError, match="no space left on the device"), atomic_path(target):
            raise raised
    assert list(tmp_path.iterdir()) == []


def test_another_users_process_counts_as_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signalling it is not permitted: it runs, and its temporary files are its own."""
    import errno

    from digit_recognizer.fileio import process_is_alive

    def not_permitted(pid: int, signal: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "kill", not_permitted)
    assert process_is_alive(1)


def test_check_can_write_refuses_a_read_only_file_before_the_work(tmp_path: Path) -> None:
    """check_can_write had passed a 0444 file that atomic_path then refused: compare and export
    did all their work first (an export's ten seconds, every model's fit) and lost it."""
    locked = tmp_path / "leaderboard.csv"
    locked.write_text("old")
    locked.chmod(0o444)
    with pytest.raises(OutputError, match=r"leaderboard\.csv: read-only \(mode 0444\)"):
        check_can_write(locked)
    locked.chmod(0o644)
    assert check_can_write(locked) == locked
