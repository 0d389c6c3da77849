"""The task process's own resource accounting (Linux) in a forked process: its peak memory is its own, not the
supervisor's it was forked from."""

from __future__ import annotations

import json
import os
import sys

import pytest

from barecount_provider.telemetry import resources

from ..unit.test_resources import MIB, _touch

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(sys.platform != "linux", reason="the kernel's accounting read here is Linux's"),
]



def _in_a_forked_child(body) -> dict:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.write(write_fd, json.dumps(body()).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return json.loads(data)


def test_a_forked_tries_peak_memory_is_its_own_and_is_vm_hwm():
    inherited = _touch(256 * MIB)
    inherited.close()  # the parent's high-water mark stays at its peak (kernels differ in what a child inherits)
    parent_peak = resources.peak_memory_bytes()
    assert parent_peak is not None and parent_peak >= 256 * MIB

    def child() -> dict:
        assert resources.reset_peak_memory()
        start = resources.sample()
        after_reset = resources.peak_memory_bytes()
        block = _touch(64 * MIB)
        with open(os.devnull, "wb") as sink:
            sink.write(b"x" * MIB)
        usage = resources.usage_since(start)
        block.close()
        return {
            "after_reset": after_reset, "peak": usage.peak_memory_bytes,
            "vm_hwm": resources.vm_hwm_bytes(), "written": usage.write_bytes,
        }

    seen = _in_a_forked_child(child)
    assert seen["after_reset"] < parent_peak - 200 * MIB  # not the supervisor's peak
    assert seen["peak"] >= seen["after_reset"] + 60 * MIB  # the try's own 64 MiB
    assert abs(seen["peak"] - seen["vm_hwm"]) <= 4 * MIB  # ru_maxrss is the VmHWM figure
    assert seen["written"] >= MIB
