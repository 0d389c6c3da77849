"""BareCount's threads and exit hooks across a fork (telemetry/threads.py)."""

from __future__ import annotations

import pytest

from barecount_provider.telemetry import threads

pytestmark = pytest.mark.integration


def test_a_forked_child_starts_with_no_exit_hook_of_its_parent() -> None:
    """A process forked from the scheduler (LocalExecutor's workers) must not stop the scheduler's
    forwarder process or join threads it does not have."""
    import os

    called: list[int] = []
    threads.on_exit(lambda: called.append(os.getpid()))
    pid = os.fork()
    if pid == 0:
        threads.run_exit_hooks()
        os._exit(3 if called else 0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    threads.run_exit_hooks()
    assert called == [os.getpid()]
