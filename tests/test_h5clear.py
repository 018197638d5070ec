"""Repairing what a killed SWMR writer leaves in a file (clients/_h5clear.py)."""

import subprocess
import sys

import pytest

h5py = pytest.importorskip("h5py")

from databus.clients._h5clear import clear_status_flags, lookup3  # noqa: E402


def test_lookup3_matches_the_reference_vectors():
    # From Bob Jenkins' lookup3.c driver: hashlittle("", 0, 0) and the "Four score" line.
    assert lookup3(b"") == 0xDEADBEEF
    assert lookup3(b"Four score and seven years ago") == 0x17770551


def test_a_file_left_by_a_killed_swmr_writer_is_writable_again(tmp_path):
    path = tmp_path / "killed.h5"
    code = f"""
import h5py, time
f = h5py.File({str(path)!r}, "w", libver="latest", locking=False)
d = f.create_dataset("x", shape=(0,), maxshape=(None,), dtype="f8", chunks=(16,))
f.swmr_mode = True
for i in range(40):
    d.resize(i + 1, axis=0); d[i] = i; d.flush()
print("written", flush=True)
time.sleep(60)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "written"
    proc.kill()
    proc.wait()
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "a", libver="latest", locking=False)
    assert clear_status_flags(path) is True
    with h5py.File(path, "a", libver="latest", locking=False) as f:
        assert f["x"][()].tolist() == list(range(40))
    assert clear_status_flags(path) is False  # a cleanly closed file needs nothing


def test_files_it_does_not_understand_are_left_alone(tmp_path):
    other = tmp_path / "not.h5"
    other.write_bytes(b"just some bytes, not HDF5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        clear_status_flags(other)
    old = tmp_path / "v0.h5"
    with h5py.File(old, "w"):  # libver earliest: a version 0 superblock, no flags to clear
        pass
    with pytest.raises(ValueError, match="version 2/3 superblock"):
        clear_status_flags(old)
