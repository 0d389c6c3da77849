"""Which of the parent's pages does each of BareCount's hooks copy in a forked task process, and why?

A diagnostic for the forked stand-in of ``bench_overhead.py`` (same supervisor set-up, same stand-in task
instance, the embedded default configuration unless ``--config`` says otherwise): a preloaded parent forks
one task process, which runs ``on_starting``, the cluster policies, ``on_task_instance_running`` and
``on_task_instance_success``, and reads ``/proc/self/pagemap`` before and after each. A page that was shared
with the parent before a hook and is the child's own after it was copied on write during the hook. The child
then compares each copied page with the parent's (``/proc/<parent>/mem``; the parent waits in ``waitpid``,
so its pages do not move) and names the object at each changed word:

* **transient**: the page is byte-for-byte the parent's again (a reference count that went up and back down,
  or a value written and restored): the copy was paid for nothing that lasted;
* **code warm-up counter**: the first lasting change is a code object's ``co_warmup`` (CPython 3.11 counts a
  function's first calls there before it specialises its byte code);
* **lasting**: anything else (a cache filled, a new object placed in a partly used memory pool, a counter).

Usage (from the repository root; reading another process's memory needs the rights to trace it)::

    .venv/bin/python benchmarks/cow_pages.py [--config on_default] [--detail running]

Prints, per hook, the minor page faults and the copied pages by kind and by mapping; ``--detail HOOK`` also
lists that hook's pages with the objects found at their first changed words. One process, one sample: the
counts move by a few pages from run to run.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import ctypes
import gc
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_overhead as bo

PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56


def _writable_mappings() -> list[tuple[int, int, str]]:
    out = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            parts = line.split()
            if "w" not in parts[1]:
                continue
            low, high = (int(x, 16) for x in parts[0].split("-"))
            out.append((low, high, parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anon]"))
    return out


def _read_pagemap(mappings: list[tuple[int, int, str]], buffers: list[bytearray]) -> None:
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        for (low, _, _), buffer in zip(mappings, buffers, strict=True):
            os.preadv(fd, [buffer], (low // PAGE) * 8)
    finally:
        os.close(fd)


def _describe(obj: Any) -> str:
    kind = type(obj).__name__
    try:
        if hasattr(obj, "co_name"):
            return f"code {obj.co_filename.rsplit('/', 1)[-1]}:{obj.co_name}"
        if hasattr(obj, "__qualname__"):
            return f"{kind} {getattr(obj, '__module__', '')}.{obj.__qualname__}"
        if isinstance(obj, str):
            return f"str {obj[:30]!r}"
        if isinstance(obj, dict):
            return f"dict of {len(obj)} ({', '.join(map(str, list(obj)[:3]))[:40]})"
    except Exception:
        pass
    return kind


class _ObjectIndex:
    """Every object reachable from the collector's objects and the modules, by address (built after the
    hooks: it takes references, i.e. writes reference counts, itself)."""

    def __init__(self) -> None:
        gc.unfreeze()
        self.sizes: dict[int, tuple[int, Any]] = {}
        stack: list[Any] = [*gc.get_objects(), *sys.modules.values()]
        while stack:
            obj = stack.pop()
            address = id(obj)
            if address in self.sizes:
                continue
            try:
                size = sys.getsizeof(obj)
            except Exception:
                size = 16
            self.sizes[address] = (size, obj)
            try:
                stack.extend(gc.get_referents(obj))
            except Exception:
                pass
        self.starts = sorted(self.sizes)

    def at(self, address: int) -> tuple[Any, int] | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        start = self.starts[i]
        size, obj = self.sizes[start]
        return (obj, address - start) if address < start + max(size, 16) else None


def _child(config: str, detail: str | None) -> None:
    from barecount_provider import cluster_policies as policies
    from barecount_provider.plugins.barecount import BareCountPlugin

    lifecycle = list(BareCountPlugin.listeners)[0]
    mappings = _writable_mappings()
    before = [bytearray((high - low) // PAGE * 8) for low, high, _ in mappings]
    after = [bytearray(len(b)) for b in before]
    ti = bo._make_ti(config, 1)
    phases: list[tuple[str, int, list[tuple[int, str]], dict[int, bytes]]] = []

    def phase(name: str, call: Callable[[], None]) -> None:
        _read_pagemap(mappings, before)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        _read_pagemap(mappings, after)
        copied = []
        for (low, _, name_), old, new in zip(mappings, before, after, strict=True):
            old_entries, new_entries = memoryview(old).cast("Q"), memoryview(new).cast("Q")
            for i in range(len(old_entries)):
                was, now = old_entries[i], new_entries[i]
                if was != now and was & _PRESENT and not was & _EXCLUSIVE and now & _EXCLUSIVE:
                    copied.append((low + i * PAGE, name_))
        phases.append((name, faults, copied, {address: ctypes.string_at(address, PAGE) for address, _ in copied}))

    def success() -> None:
        ti.state = "success"
        lifecycle.on_task_instance_success(previous_state="running", task_instance=ti)

    phase("starting", lambda: lifecycle.on_starting(component=bo.TaskRunnerMarker()))
    phase("policies", lambda: bo.apply_cluster_policies(policies, ti.task.dag))
    phase("running", lambda: lifecycle.on_task_instance_running(previous_state="queued", task_instance=ti))
    phase("success", success)

    try:
        parent = open(f"/proc/{os.getppid()}/mem", "rb")
    except OSError as err:
        parent = None
        print(f"(the parent's memory is not readable: {err}; pages are not classified)")
    index = _ObjectIndex() if parent is not None else None
    for name, faults, copied, copies in phases:
        kinds: collections.Counter[str] = collections.Counter()
        where: collections.Counter[str] = collections.Counter(mapping for _, mapping in copied)
        lines = []
        for address, mapping in copied:
            first = None
            if parent is not None and index is not None:
                parent.seek(address)
                theirs, mine = parent.read(PAGE), copies[address]
                changed = [off for off in range(0, PAGE, 8) if theirs[off : off + 8] != mine[off : off + 8]]
                found = index.at(address + changed[0]) if changed else None
                first = None if found is None else f"{_describe(found[0])} @{found[1]}"
                code_counter = found is not None and hasattr(found[0], "co_name") and found[1] == 48
                kind = "transient" if not changed else "code warm-up counter" if code_counter else "lasting"
                kinds[kind] += 1
                lines.append(f"    {mapping:12s} {address:#x} {kind:22s} {len(changed):4d} words  {first or '?'}")
            else:
                lines.append(f"    {mapping:12s} {address:#x}")
        print(f"{name}: {faults} minor faults, {len(copied)} pages copied: "
              f"{', '.join(f'{v} {k}' for k, v in kinds.most_common())}; "
              f"by mapping: {', '.join(f'{v} {k}' for k, v in where.most_common())}")
        if name == detail:
            print("\n".join(lines))
    if parent is not None:
        parent.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # BareCount's own listener in every configuration (the benchmark's `floor` listener is not BareCount's).
    parser.add_argument(
        "--config", default="on_default", choices=[c for c in bo.ALL_CONFIGS if c not in ("off", "floor")]
    )
    parser.add_argument("--detail", choices=("starting", "policies", "running", "success"))
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="barecount-cow-"))
    os.environ.update(bo.config_env(args.config, {}, workdir, 250))
    import barecount_provider.plugins.barecount  # noqa: F401 - the preloaded supervisor: preload() runs here

    gc.freeze()  # as LocalExecutor before it forks
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            _child(args.config, args.detail)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    sys.exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
