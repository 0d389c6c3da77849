"""The task process's own resource accounting (Linux): its peak memory is its own, not the supervisor's it
was forked from, and the counters of a try are those of the try."""

from __future__ import annotations

import mmap
import os
import sys

import pytest

from barecount_provider.telemetry import resources

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the kernel's accounting read here is Linux's")

MIB = 2**20


def _touch(size: int) -> mmap.mmap:
    block = mmap.mmap(-1, size)
    for offset in range(0, size, mmap.PAGESIZE):
        block[offset] = 1
    return block


def test_a_tries_start_sample_keeps_proc_io_open_until_its_end(tmp_path):
    """The try's end reads /proc/self/io through the descriptor its start opened (pread at offset 0 gives
    fresh counters), and closes it; a try that ends without usage_since is released."""
    start = resources.sample(keep_open=True)
    assert start.io_fd is not None and start.write_bytes is not None
    os.fstat(start.io_fd)  # open
    (tmp_path / "data").write_bytes(b"x" * (3 * MIB))
    usage = resources.usage_since(start)
    assert usage.write_bytes is not None and usage.write_bytes >= 3 * MIB
    with pytest.raises(OSError):
        os.fstat(start.io_fd)  # closed by usage_since
    assert resources.sample().io_fd is None  # a plain sample keeps nothing open
    abandoned = resources.sample(keep_open=True)
    resources.release(abandoned)
    with pytest.raises(OSError):
        os.fstat(abandoned.io_fd)


def test_start_of_try_reads_proc_io_through_a_descriptor_it_keeps_and_counts_the_try_s_own_bytes(tmp_path):
    """start_of_try resets the high-water mark and reads /proc/self/io through a descriptor it keeps;
    usage_since counts only what the try wrote, and closes it."""
    start = resources.start_of_try()
    assert start.io_fd is not None and start.read_bytes is not None and start.write_bytes is not None
    (tmp_path / "data").write_bytes(b"x" * (2 * MIB))
    usage = resources.usage_since(start)
    assert usage.write_bytes is not None and 2 * MIB <= usage.write_bytes < 3 * MIB
    with pytest.raises(OSError):
        os.fstat(start.io_fd)


def test_start_of_try_without_reset_leaves_clear_refs_alone(monkeypatch):
    """preload's warm-up runs the start's path in the process that forks the task processes: it must not
    reset that process's memory high-water mark."""
    opened = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(resources.os, "open", recording_open)
    resources.release(resources.start_of_try(reset_peak=False))
    assert opened == ["/proc/self/io"]
    resources.release(resources.start_of_try())
    assert opened[1:] == ["/proc/self/clear_refs", "/proc/self/io"]


@pytest.mark.parametrize(
    "text, expected",
    [
        (b"rchar: 12\nwchar: 34\nsyscr: 1\n", (12, 34)),
        (b"rchar: 12\nwchar: 34", (12, 34)),  # no final newline
        (b"wchar: 34\nrchar: 12\n", (None, None)),  # not the kernel's order: not guessed
        (b"rchar: x\nwchar: 34\n", (None, None)),
        (b"rchar: 12\n", (None, None)),
        (b"", (None, None)),
    ],
)
def test_proc_io_parsing(text, expected):
    assert resources._parse_io(text) == expected
