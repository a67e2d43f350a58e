"""Atomic file output: a crash or a kill never leaves a half-written result behind."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from digit_recognizer.errors import DigitsError, OutputError, first_line

LOCK_FILE = ".lock"
# Age past which a temporary file in a folder other machines' processes share is a killed
# writer's, whatever its pid says here: every writer here finishes a file in seconds.
LEFTOVER_AGE_S = 600
# The longest file name ext4, XFS, Btrfs and APFS take, in bytes (UTF-8 on APFS).
MAX_NAME_BYTES = 255


def make_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory, made with its parents if need be; ``OutputError`` when a file
    stands where it, or a folder above it, would be."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:  # FileExistsError, NotADirectoryError, PermissionError
        raise OutputError(f"{path}: cannot be made a directory ({error.strerror or error}); "
                          "give another") from None  # fmt: skip
    return path


def missing_dirs(folder: str | os.PathLike[str]) -> list[Path]:
    """The folders ``make_dir(folder)`` would make: ``folder`` and those missing above it,
    nearest first, for ``remove_empty_dirs`` to take back."""
    return [path for path in (Path(folder), *Path(folder).parents) if not path.exists()]


def remove_empty_dirs(made: list[Path]) -> None:
    """Remove the folders of ``made`` (``missing_dirs``'), nearest first, while each is empty:
    those a command made for output it then did not write. One that another process put a
    file in meanwhile stays, and those above it."""
    with contextlib.suppress(OSError):
        for path in made:
            path.rmdir()


def check_can_write(path: str | os.PathLike[str]) -> Path:
    """``path``, or ``OutputError`` where it could not be written: a device, a pipe or "-"
    (``refuse_special_file``), a file stands where a folder above it would be, or the nearest
    folder there is takes no new files. Checked before the work whose result goes there, not
    after it."""
    path = refuse_special_file(Path(path))  # here: else export --out - is refused once exported
    if path.is_dir():
        raise OutputError(f"{path}: a folder, where a file is to be written; give a file's path")
    above = _nearest_existing(path.absolute().parent)
    if not above.is_dir():
        raise OutputError(f"{path}: cannot be written: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        why = ("read-only file system" if os.statvfs(above).f_flag & os.ST_RDONLY
               else "no permission to write")  # fmt: skip
        raise OutputError(f"{path}: cannot be written: {why} in {above}")
    _refuse_read_only(path)
    return path


def _nearest_existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (a file, perhaps)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes free to this user on the file system ``folder`` is on, or would be made on."""
    return shutil.disk_usage(_nearest_existing(Path(folder).absolute())).free


def _refuse_read_only(path: Path) -> None:
    """OutputError for a file there without write permission: root may rename over it, and
    nobody may write it."""
    if path.is_file() and not (mode := path.stat().st_mode & 0o777) & 0o222:
        raise OutputError(f"{path}: read-only (mode {mode:04o}); make it writable or give "
                          "another path")  # fmt: skip


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is flushed to disk and renamed over it.

    Any writer can use it (pyarrow, matplotlib, safetensors, torch.save): the rename is atomic on
    POSIX, so readers see either the old file or the complete new one, never a torn write.
    """
    path = refuse_special_file(Path(path))
    if path.is_symlink():  # the file it links to is replaced, and the link stays one
        path = path.resolve()
    try:
        # Permission bits only: a setuid bit kept on a file root rewrites would hand it out.
        mode = path.stat().st_mode & 0o777 if path.is_file() else 0o666 & ~_umask()
        _refuse_read_only(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # Named with the writer's pid: what a killed writer left is told from what a live one
        # is writing (remove_leftovers), and the next writer of the file removes it: outside a
        # locked folder (predict's, export's) nothing else removes a killed write's.
        remove_leftovers(path.parent, min_age_s=LEFTOVER_AGE_S, of=path.name)
        prefix = f"{_temporary_prefix(path.name)}{os.getpid()}-"
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    except OSError as error:
        raise _cannot_be_written(path, error) from None
    os.close(fd)
    tmp = Path(tmp_name)
    _WRITING.add(tmp.resolve())
    try:
        try:
            yield tmp
            # mkstemp creates 0600, and some writers make the file anew (safetensors does, 0600
            # again): give the result the old file's permissions, or those open() would give.
            tmp.chmod(mode)
            with open(tmp, "rb+") as written:
                os.fsync(written.fileno())
        except DigitsError:
            raise
        except Exception as error:
            if (failure := _write_failure(error, path)) is not None:
                raise failure from None
            raise
        try:
            os.replace(tmp, path)
        except OSError as error:  # a directory of that name, most often
            raise _cannot_be_written(path, error) from None
        _sync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
        _WRITING.discard(tmp.resolve())


def write_together(writers: Iterable[tuple[Path, Callable[[Path], object]]]) -> None:
    """Write files that belong together, each by its writer into ``atomic_path``'s temporary
    file, all in full before any replaces its older one: written one at a time, a full disk or
    a failure part-way would leave new files beside older ones of another result."""
    with contextlib.ExitStack() as replaced_together:
        for path, write in writers:  # entered then written: a failure names its own file
            write(replaced_together.enter_context(atomic_path(path)))


def _sync_directory(directory: Path) -> None:
    """Flush the names in ``directory`` to disk. The file's own fsync leaves its rename in the
    page cache: a power cut after it can bring back the old file, or none, under the name."""
    with contextlib.suppress(OSError):  # a file system that cannot sync a directory
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_failure(error: Exception, path: Path) -> OutputError | None:
    """A writer's failure as a user's error naming ``path``, where the disk caused it: a full
    disk fails torch.save with a RuntimeError ("unexpected pos ..."), safetensors with its own
    error and Pillow with an OSError naming no file, each of which would end in a traceback.
    None for other failures (a bug's)."""
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    with contextlib.suppress(OSError):  # what is left once the writer gave up
        full = full or shutil.disk_usage(path.parent).free < 1 << 20
    if full or "No space left on device" in str(error):
        return OutputError(f"{path}: cannot be written: no space left on the device; free some, "
                           "or give a path on another")  # fmt: skip
    if isinstance(error, OSError) and not error.filename:
        return _cannot_be_written(path, error)
    return None


def _cannot_be_written(path: Path, error: OSError) -> OutputError:
    return OutputError(f"{path}: cannot be written ({error.strerror or first_line(error)})")


def refuse_special_file(path: Path) -> Path:
    """``path``, unless it is a device, a pipe or a socket (/dev/stdout, /dev/null), or leads
    into /dev or /proc: the rename of a new file over it would replace the device node or link
    itself (as root, for every process), and /dev/stdout redirected to a file is a link to it."""
    if str(path) == "-":  # stdout by the shell's convention, not a file to be named "-"
        raise OutputError("output path '-': writing to standard output is not supported (every "
                          "output is a file, written whole); give a file path")  # fmt: skip
    try:
        places = [str(place) for place in _links_from(path)]
    except (RuntimeError, OSError) as error:  # a loop of links: RuntimeError before Python 3.13
        raise OutputError(f"{path}: cannot be followed ({first_line(error)}); give a file's "
                          "path") from None  # fmt: skip
    is_system = any(place.startswith(("/dev/", "/proc/"))
                    and not place.startswith("/dev/shm/")  # memory-backed files
                    for place in places)  # fmt: skip
    if is_system or (path.exists() and not path.is_file() and not path.is_dir()):
        raise OutputError(f"{path}: not a regular file (a device, a pipe or /dev/stdout), which "
                          "is written by replacing it; give a file's path")  # fmt: skip
    return path


def _links_from(path: Path) -> list[Path]:
    """``path`` (absolute) and each link it leads through: /proc/self/fd/1's target is the
    file stdout was redirected to, or a pipe, so the hops themselves must be looked at."""
    hops = [path.absolute()]
    while hops[-1].is_symlink() and len(hops) < 40:  # 40: the kernel's own limit on hops
        hops.append(hops[-1].parent / os.readlink(hops[-1]))
    # Each as the kernel reaches it: its folders' links followed and ".." taken (the text of
    # /tmp/../proc/self/fd/1, or of fdlink/1 with fdlink -> /proc/self/fd, starts elsewhere).
    return [Path(os.path.normpath(hop.parent.resolve() / hop.name)) for hop in hops] + [
        path.resolve()
    ]


def _umask() -> int:
    """The process's umask, read without setting it (os.umask would, for an instant, for every
    thread); Linux's /proc, else that instant."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    umask = os.umask(0)
    os.umask(umask)
    return umask


def is_glob(source: str | Path) -> bool:
    """Whether ``source`` is a pattern of files (a quoted glob), not a path: it names no file
    and holds ``*``, ``?`` or ``[``."""
    return not Path(source).exists() and any(char in str(source) for char in "*?[")


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The file's SHA-256 (hex), read in blocks: memory stays flat for files of any size."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 << 20):
            digest.update(block)
    return digest.hexdigest()


def source_record(role: str, path: str | os.PathLike[str] | None) -> dict[str, str | None]:
    """``{role}_csv`` and ``{role}_sha256``: where rows came from, absolute, and the file's hash
    where they are one file (None for shards or a glob), so that a run's metrics.json or a
    leaderboard names its data from whatever directory it is read, and never another file of
    that name (the report rebuilds a validation split from it)."""
    if path is None:
        return {f"{role}_csv": None, f"{role}_sha256": None}
    return {
        f"{role}_csv": str(Path(path).resolve()),
        f"{role}_sha256": sha256_file(path) if Path(path).is_file() else None,
    }


def xdg_home(variable: str, default: str) -> Path:
    """The folder in ``$variable`` (XDG_CACHE_HOME, XDG_DATA_HOME), or ``~/default`` where it is
    unset or relative: ignored then, as the XDG spec says (a relative one moves with the
    working folder)."""
    folder = Path(os.environ.get(variable, ""))
    return folder if folder.is_absolute() else Path.home() / default


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_not_in_use(folder: str | os.PathLike[str]) -> None:
    """``DigitsError`` naming the holder if a process holds ``folder``'s lock now (``locked_dir``):
    for a launcher whose processes take the lock themselves, each then refusing in its turn."""
    folder = Path(folder)
    if (folder / LOCK_FILE).is_file():
        with open(folder / LOCK_FILE, "a+") as handle:
            _lock_or_refuse(folder, handle)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock_or_refuse(folder: Path, handle: IO[str], elsewhere: str = "another --out") -> None:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        raise DigitsError(
            f"{folder} is in use by {holder}; wait for it to finish or choose {elsewhere}"
        ) from None


def _write_holder(folder: Path, handle: IO[str]) -> None:
    """This process's pid in the lock file, for a refused second command to name. Written
    unbuffered: a full disk fails here, naming the folder, rather than again as it closes."""
    try:
        os.ftruncate(handle.fileno(), 0)
        os.write(handle.fileno(), f"process {os.getpid()}\n".encode())
    except OSError as error:  # a full disk: its path told, not a bare "No space left on device"
        # The folder, which the user gave: its .lock is ours, and `data shard`'s is that of a
        # hidden build folder, which told as DIR/.lock names a file no command tried to write.
        raise _write_failure(error, folder) or error from None


@contextmanager
def locked_dir(folder: str | os.PathLike[str], elsewhere: str = "another --out") -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (a run directory) or fail at once with the holder,
    saying to choose ``elsewhere``; temporary files that killed writers left there are removed
    (``remove_leftovers``).

    An OS file lock (flock), not a marker file: the kernel releases it when the holder exits,
    even by SIGKILL, so an interrupted run can be resumed without clearing anything by hand.
    """
    while True:
        made = missing_dirs(folder)
        path = make_dir(folder)
        with open(path / LOCK_FILE, "a+") as handle:
            _lock_or_refuse(path, handle, elsewhere)
            # A refused first command removes the folder it made as it holds the lock: one
            # who opened the lock file a moment before holds the lock of no file, and tries
            # again, making the folder anew.
            if not is_file_at(handle, path / LOCK_FILE):
                continue
            try:
                _write_holder(path, handle)
                remove_leftovers(path)
                yield path
            finally:
                handle.truncate(0)
                if made and [entry.name for entry in path.iterdir()] == [LOCK_FILE]:
                    # Made here and left empty (settings refused once the data was read): gone,
                    # not a folder holding a lone .lock, and so are the empty folders made
                    # above it (`--out new/exp/run` leaves no new/exp). The error that refused
                    # the run is the one told.
                    with contextlib.suppress(OSError):
                        (path / LOCK_FILE).unlink()
                        remove_empty_dirs(made)
                fcntl.flock(handle, fcntl.LOCK_UN)
            return


def is_file_at(handle: IO[str], path: Path) -> bool:
    """Whether the open file ``handle`` is the one at ``path`` now (not removed or replaced)."""
    try:
        return os.path.samestat(os.fstat(handle.fileno()), path.stat())
    except FileNotFoundError:
        return False


@contextmanager
def locked_temporary_dir(prefix: str) -> Iterator[Path]:
    """A folder of the system's temporary ones, named ``prefix``..., locked while in use
    (``locked_dir``) and removed afterwards. Those of the same prefix whose process was killed
    outright, with no moment to remove its own, are removed first (``remove_unlocked_dirs``)."""
    remove_unlocked_dirs(Path(tempfile.gettempdir()).glob(f"{prefix}*"))
    with tempfile.TemporaryDirectory(prefix=prefix) as scratch, locked_dir(scratch) as folder:
        yield folder


def remove_unlocked_dirs(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` (scratch a fit or a trial trains in) whose lock no process
    holds (``locked_dir``): an flock, which the kernel drops as its holder ends, tells a killed
    holder from a live one in any container, and on any machine sharing the file system, where
    a pid says nothing. Only folders a lock was taken in (a user's own `trial1-baseline` in a
    tune --out has none) are removed. Best effort: one not ours to remove stays."""
    for folder in folders:
        if (folder / LOCK_FILE).is_file():
            with contextlib.suppress(DigitsError, OSError):
                check_not_in_use(folder)
                shutil.rmtree(folder)


# atomic_path's temporary files: .NAME.PID-RANDOM.tmp (mkstemp's 8 random characters), NAME cut
# to leave room for the rest with a pid of up to 7 digits (Linux's pid_max)
_TEMPORARY_NAME_BYTES = MAX_NAME_BYTES - len("..4194304-XXXXXXXX.tmp")
_TEMPORARY_FILE = re.compile(r"\..+\.(\d{1,9})-[a-z0-9_]{8}\.tmp")
_WRITING: set[Path] = set()  # this process's temporary files, being written (resolved)


def remove_leftovers(folder: Path, min_age_s: float = 0.0, of: str | None = None) -> None:
    """Remove the temporary files in ``folder`` (those of file ``of`` only, if given) whose
    writer is dead: a process killed outright (SIGKILL, the machine's end) leaves the one it was
    writing. A live writer's (``digits report`` beside a training, say) and other programs'
    files are left alone; one named with this process's pid that it is not writing is a killed
    run's (a container restarted gives the same pid again). ``min_age_s``: only files
    untouched that long, where no lock keeps out a writer in another container or on another
    machine, whose pid says nothing here. Best effort: a folder that cannot be written keeps
    them."""
    for path in folder.glob(f"{glob.escape(_temporary_prefix(of))}*.tmp" if of else ".*.tmp"):
        match = _TEMPORARY_FILE.fullmatch(path.name)
        if match and path.resolve() not in _WRITING and is_leftover_of(int(match[1])):
            with contextlib.suppress(OSError):
                # (A file dated ahead by a clock set back is old enough when no age is asked.)
                if min_age_s <= 0 or time.time() - path.stat().st_mtime >= min_age_s:
                    path.unlink(missing_ok=True)


def _temporary_prefix(name: str) -> str:
    """``.NAME.``, which begins the name of each temporary file of file ``name`` (atomic_path's,
    and those remove_leftovers looks for). NAME is cut to fit the temporary file's name in
    MAX_NAME_BYTES, else a file named over ~233 bytes, which the file system takes, is refused
    ("File name too long"). Two names alike up to the cut share it: writing one removes what a
    killed writer of the other left, never what a live one is writing (remove_leftovers tells
    them apart by pid)."""
    return f".{cut_name(name, _TEMPORARY_NAME_BYTES)}."


def cut_name(name: str, max_bytes: int) -> str:
    """``name`` cut to at most ``max_bytes`` bytes as the file system stores it, at a whole
    UTF-8 character (a name that is no UTF-8, its bytes held as surrogates, keeps them)."""
    encoded = os.fsencode(name)
    cut = max_bytes
    # A UTF-8 character is 4 bytes at most: a name of continuation-like bytes (no UTF-8) is
    # cut so too, where stepping back over all of them would leave nothing of it.
    for _ in range(3):
        if 0 < cut < len(encoded) and encoded[cut] & 0b1100_0000 == 0b1000_0000:
            cut -= 1  # a UTF-8 continuation byte at the cut: its character goes whole
    return os.fsdecode(encoded[:cut])


def is_leftover_of(pid: int) -> bool:
    """Whether a temporary file named with its writer's ``pid`` was left by one now gone: no
    process has that pid, or this one does, a restart having given it the pid again (what this
    process is writing now, its caller tells apart)."""
    return pid == os.getpid() or not process_is_alive(pid)


def process_is_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine; another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
