"""Resource accounting of the task process itself, from the operating system's own counters.

Read at the start and end of a try: CPU time (``os.times``: the process and the children it waited for),
bytes read and written (``/proc/self/io``: rchar / wchar) and peak resident memory (the process's memory
high-water mark: ``getrusage``'s ``ru_maxrss``, the same figure as ``VmHWM`` in ``/proc/self/status``, in
one system call instead of a file to open, read and close). The task process is forked from a supervisor:
writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark at the start of the try, so the peak
is the try's own, never the supervisor's, whatever the kernel copies at the fork. Each read costs a few
microseconds; where a file is missing (not Linux) that figure is simply absent.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceSample:
    cpu_seconds: float
    read_bytes: int | None
    write_bytes: int | None
    # /proc/self/io kept open by a start sample: the end of the try reads it again with pread, without
    # opening it a second time; usage_since closes it.
    io_fd: int | None = None


_IO_READ = 512
"""Bytes read of ``/proc/self/io`` at once: its seven counters take about 150; 512 or fewer come from
Python's small-object allocator, where a larger buffer is a ``malloc`` (about three copy-on-write page faults
more in a forked task process). A file that fills it is read again whole."""


def _read_proc(path: str, size: int = 8192) -> bytes:
    """A small /proc file in one read, without Python's buffered file objects."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, size)
    finally:
        os.close(fd)


def _parse_io(data: bytes) -> tuple[int | None, int | None]:
    """rchar and wchar of /proc/self/io, its first two lines (``rchar: N``, ``wchar: N``, as the kernel has
    always written them); (None, None) where they are not."""
    lines = data.split(b"\n", 2)
    if len(lines) >= 2 and lines[0].startswith(b"rchar:") and lines[1].startswith(b"wchar:"):
        try:
            return int(lines[0][6:]), int(lines[1][6:])
        except ValueError:
            pass
    return None, None


def _read_io() -> tuple[int | None, int | None]:
    try:
        data = _read_proc("/proc/self/io", _IO_READ)
        if len(data) >= _IO_READ:
            data = _read_proc("/proc/self/io")
        return _parse_io(data)
    except OSError:
        return None, None


def _pread_io(fd: int) -> tuple[int | None, int | None]:
    """/proc/self/io again through an open descriptor (pread at 0 gives the counters of now)."""
    try:
        data = os.pread(fd, _IO_READ, 0)
        if len(data) >= _IO_READ:
            data = os.pread(fd, 8192, 0)
        return _parse_io(data)
    except OSError:
        return None, None


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def sample(keep_open: bool = False) -> ResourceSample:
    """The counters now. ``keep_open``: a try's start, whose end (:func:`usage_since`) reads ``/proc/self/io``
    again through the same file descriptor, then closes it (:func:`start_of_try` without the reset)."""
    if keep_open:
        return start_of_try(reset_peak=False)
    cpu = _cpu_seconds()
    read, write = _read_io()
    return ResourceSample(cpu_seconds=cpu, read_bytes=read, write_bytes=write)


def reset_peak_memory() -> bool:
    """Reset this process's resident-memory high-water mark (Linux >= 4.0). False where unsupported."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def start_of_try(reset_peak: bool = True) -> ResourceSample:
    """At the start of a try: :func:`reset_peak_memory` (unless ``reset_peak`` is false), then the counters,
    ``/proc/self/io`` kept open for the end of the try (:func:`usage_since` reads it again and closes it)."""
    if reset_peak:
        reset_peak_memory()
    cpu = _cpu_seconds()
    try:
        fd = os.open("/proc/self/io", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ResourceSample(cpu, None, None)
    read, write = _pread_io(fd)
    return ResourceSample(cpu, read, write, fd)


def peak_memory_bytes() -> int | None:
    if sys.platform == "linux":  # ru_maxrss in KiB: the memory high-water mark clear_refs resets
        try:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        except OSError:
            pass
    return vm_hwm_bytes()


def vm_hwm_bytes() -> int | None:
    """``VmHWM`` of ``/proc/self/status``, in bytes; None where there is none."""
    try:
        status = _read_proc("/proc/self/status")
        start = status.find(b"VmHWM:")
        if start < 0:
            return None
        return int(status[start:status.find(b"\n", start)].split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None


@dataclasses.dataclass(frozen=True, slots=True)
class ResourceUsage:
    cpu_seconds: float
    read_bytes: int | None
    write_bytes: int | None
    peak_memory_bytes: int | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "cpu_seconds": self.cpu_seconds,
            "read_bytes": self.read_bytes,
            "write_bytes": self.write_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


def release(start: ResourceSample) -> None:
    """Close what a start sample kept open, for a try that ends without :func:`usage_since`."""
    if start.io_fd is not None:
        try:
            os.close(start.io_fd)
        except OSError:
            pass


def usage_since(start: ResourceSample) -> ResourceUsage:
    if start.io_fd is None:
        end = sample()
    else:
        cpu = _cpu_seconds()
        read, write = _pread_io(start.io_fd)
        release(start)
        end = ResourceSample(cpu_seconds=cpu, read_bytes=read, write_bytes=write)

    def delta(a: int | None, b: int | None) -> int | None:
        return None if a is None or b is None else max(0, b - a)

    return ResourceUsage(
        cpu_seconds=max(0.0, end.cpu_seconds - start.cpu_seconds),
        read_bytes=delta(start.read_bytes, end.read_bytes),
        write_bytes=delta(start.write_bytes, end.write_bytes),
        peak_memory_bytes=peak_memory_bytes(),
    )
