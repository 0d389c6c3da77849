"""JSON lines, as every file BareCount appends to writes them (the file sink, the span file, the outbox)."""

from __future__ import annotations

import os
from typing import Any

import msgspec

# msgspec (the task SDK's own serializer) writes JSON straight into one buffer: about three times faster than
# the json module's C encoder, which makes a string of every key and value first (0.05 against 0.16 ms, and
# half the page faults, for the three lines a try writes). Types JSON lacks go through ``str``.
_encode = msgspec.json.Encoder(enc_hook=str).encode


def encode_line(record: Any) -> bytes:
    """One JSON line (UTF-8, without its newline) as :func:`append_lines` writes it."""
    return _encode(record)


def append_lines(path: str, records: list[Any]) -> None:
    """Append ``records`` as JSON lines with one ``write`` on a file opened with ``O_APPEND`` (lines of
    concurrent processes never interleave); the directory is made only when it is missing. Raises OSError."""
    data = b"".join([encode_line(record) + b"\n" for record in records])
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
