import gzip
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from digit_recognizer.data.idx import read_idx
from digit_recognizer.data.mnist import (
    FILES,
    load_mnist,
    mnist_dir,
    read_checksums,
    verify_checksums,
)
from digit_recognizer.errors import DataError
from digit_recognizer.fileio import sha256_file


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.idx", array, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


def test_read_idx_truncated_names_file(tmp_path):
    path = tmp_path / "cut.idx"
    write_idx(path, np.zeros((5, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"cut\.idx: header declares shape \(5, 28, 28\)"):
        read_idx(path)


def test_read_idx_cut_within_its_header_says_so(tmp_path):
    """An images file cut after 10 bytes had been said to declare shape (60000, 0, 0): the sizes
    cut off read as 0."""
    path = tmp_path / "cut.idx"
    write_idx(path, np.zeros((60000, 28, 28), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(DataError) as refused:
        read_idx(path)
    assert str(refused.value) == (
        f"{path}: the header's 3 dimension sizes end at byte 16 but the file has 10 bytes; the "
        "file is truncated or corrupt"
    )


def test_read_idx_rejects_non_idx(tmp_path):
    path = tmp_path / "x.idx"
    path.write_bytes(b"hello world")
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)
    # Three bytes are a magic number without its count of dimensions, not an IndexError.
    path.write_bytes(bytes([0, 0, 0x08]))
    with pytest.raises(DataError, match=r"not an IDX file \(bad magic number 000008\)"):
        read_idx(path)
    cut_gzip = gzip.compress(bytes(1000))[:-20]  # a download stopped short: EOFError, not zlib's
    for corrupt in (b"\x1f\x8bnot gzip at all", _corrupted(gzip.compress(bytes(1000))), cut_gzip):
        path.write_bytes(corrupt)
        with pytest.raises(DataError, match="not a readable gzip file"):
            read_idx(path)


def test_read_idx_refuses_a_shape_whose_size_overflows_int64(tmp_path):
    path = tmp_path / "huge.idx"
    path.write_bytes(bytes([0, 0, 0x08, 4]) + (65536).to_bytes(4, "big") * 4)  # 2**64 bytes
    with pytest.raises(DataError, match=r"huge\.idx: header declares shape \(65536, 65536, "):
        read_idx(path)


def _corrupted(data: bytes) -> bytes:
    """The first bytes after the 10-byte gzip header flipped: zlib's own error, not gzip's."""
    return data[:10] + bytes(b ^ 0xFF for b in data[10:12]) + data[12:]


def test_embedded_mnist_is_complete_and_verified(mnist):
    assert mnist.images.shape == (70000, 28, 28) and mnist.images.dtype == np.uint8
    assert mnist.labels.dtype == np.int64
    assert np.bincount(mnist.labels).tolist() == [6903, 7877, 6990, 7141, 6824, 6313, 6876,
                                                  7293, 6825, 6958]  # fmt: skip


def test_an_installed_package_finds_the_files_where_the_wheel_puts_them(tmp_path):
    """The package laid out as pyproject.toml's wheel build lays it out, away from the
    checkout: mnist_dir() is the package's own copy, and the licences travel too."""
    checkout = Path(__file__).resolve().parents[1]
    project = tomllib.loads((checkout / "pyproject.toml").read_text())
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    site = tmp_path / "site-packages"
    for source in wheel["packages"]:
        shutil.copytree(checkout / source, site / Path(source).name)
    for source, target in wheel["force-include"].items():
        shutil.copytree(checkout / source, site / target)
    found = subprocess.run(
        [sys.executable, "-c", "from digit_recognizer.data.mnist import mnist_dir, load_mnist; "
         "load_mnist(); print(mnist_dir())"],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(found).parent == site / "digit_recognizer" / "data"
    assert all((checkout / name).is_file() for name in project["project"]["license-files"])


def test_checksum_mismatch_names_the_file(tmp_path):
    for name in [*FILES.values(), "SHA256SUMS"]:
        shutil.copy(mnist_dir() / name, tmp_path / name)
    victim = tmp_path / FILES["test_labels"]
    raw = bytearray(victim.read_bytes())
    raw[-1] ^= 0xFF
    victim.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: SHA-256 .* does not match"):
        verify_checksums(tmp_path)
    with pytest.raises(DataError, match="does not match"):
        load_mnist(tmp_path)


def test_checksum_list_tolerates_blank_lines_and_names_a_malformed_one(tmp_path):
    for name in FILES.values():
        (tmp_path / name).symlink_to(mnist_dir() / name)
    listing = (mnist_dir() / "SHA256SUMS").read_text().splitlines()
    sums = tmp_path / "SHA256SUMS"
    # A blank line had raised ValueError (not enough values to unpack) from load_mnist.
    edited = ["", listing[0] + "  ", "   ", *listing[1:], ""]
    sums.write_bytes("\r\n".join(edited).encode())
    verify_checksums(tmp_path)
    sums.write_text("\n".join([listing[0], "", "not a checksum line", *listing[1:]]))
    with pytest.raises(DataError, match=r"SHA256SUMS, line 3: expected .* 'not a checksum line'"):
        load_mnist(tmp_path)
    sums.unlink()
    with pytest.raises(DataError, match=r"SHA256SUMS: embedded MNIST checksum list is missing"):
        load_mnist(tmp_path)


def test_embedded_mnist_puts_its_training_set_first(mnist):
    """The replica's permutation and the small test slices take rows by index: 60,000 training
    images, then MNIST's 10,000 test images."""
    assert np.bincount(mnist.labels[:60000]).tolist() == [5923, 6742, 5958, 6131, 5842, 5421,
                                                          5918, 6265, 5851, 5949]  # fmt: skip


def test_checksum_list_reads_sha256sums_binary_mode_uppercase_digests_and_a_bom(tmp_path):
    """`sha256sum -b` writes "<digest> *<name>"; a Windows editor may write uppercase hex and a
    byte-order mark."""
    expected = read_checksums(mnist_dir() / "SHA256SUMS")
    sums = tmp_path / "SHA256SUMS"
    lines = [f"{digest.upper()} *{name}" for name, digest in expected.items()]
    sums.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    assert read_checksums(sums) == expected
    for name in FILES.values():
        (tmp_path / name).symlink_to(mnist_dir() / name)
    verify_checksums(tmp_path)


def test_a_missing_mnist_file_is_named(tmp_path):
    """Not pathlib's FileNotFoundError from hashing it."""
    shutil.copy(mnist_dir() / "SHA256SUMS", tmp_path / "SHA256SUMS")
    for name in FILES.values():
        if name != FILES["test_images"]:
            (tmp_path / name).symlink_to(mnist_dir() / name)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: embedded MNIST file is miss"):
        load_mnist(tmp_path)


def test_mnist_files_whose_checksums_match_but_not_mnists_shape_are_refused(tmp_path):
    """A folder given to load_mnist with its own files and SHA256SUMS: not 70,000 images."""
    for key, name in FILES.items():
        shape = (3, 28, 28) if key.endswith("images") else (3,)
        write_idx(tmp_path / name, np.zeros(shape, np.uint8), compress=True)
    listing = [f"{sha256_file(tmp_path / name)}  {name}" for name in FILES.values()]
    (tmp_path / "SHA256SUMS").write_text("\n".join(listing) + "\n")
    with pytest.raises(DataError, match=r"expected 70,000 28x28 images, got \(6, 28, 28\)"):
        load_mnist(tmp_path)


def test_read_idx_refuses_each_header_defect_by_name(tmp_path):
    path = tmp_path / "bad.idx"
    good = bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + bytes(3)
    # Every byte of the magic number counts, not only the first: 0x0100... is no IDX file.
    path.write_bytes(b"\x00\x01" + good[2:])
    with pytest.raises(DataError, match=r"bad\.idx: not an IDX file \(bad magic number 00010801\)"):
        read_idx(path)
    # Element type 0x0D (float) would be misread as bytes without this check.
    path.write_bytes(good[:2] + b"\x0d" + good[3:])
    with pytest.raises(DataError, match="element type 0x0d is not unsigned byte"):
        read_idx(path)
    # Bytes beyond the declared shape are corruption too (say, two files concatenated).
    path.write_bytes(good + b"\x00")
    with pytest.raises(DataError, match=r"shape \(3,\) \(11 bytes\) but the file has 12 bytes"):
        read_idx(path)
    with pytest.raises(DataError, match=r"missing\.idx: file not found"):
        read_idx(tmp_path / "missing.idx")
    with pytest.raises(DataError, match=r"cannot be read \(Is a directory\)$"):  # not "gzip"
        read_idx(tmp_path)
