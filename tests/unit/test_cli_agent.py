"""``barecount agent heartbeat`` (barecount_provider/cli/agent.py) without a server: its options (a bad one exits
2 with one line), missing settings, and the backoff between retries. Against a real HTTP server on 127.0.0.1
(token, Bearer, a 401 refreshing the token, a server that is down, SIGTERM): tests/integration/test_cli_agent.py."""

from __future__ import annotations

import random

import pytest

from barecount_provider import cli
from barecount_provider.cli import agent


def test_the_backoff_doubles_from_one_second_up_to_the_cap_with_jitter() -> None:
    rng = random.Random(3)
    waits = [agent.backoff(n, 30.0, rng) for n in range(1, 12)]
    for n, seconds in enumerate(waits):
        ceiling = min(30.0, 2.0**n)
        assert ceiling / 2 <= seconds <= ceiling, (n, waits)
    assert waits[:6] == sorted(waits[:6]) and max(waits) <= 30.0
    assert len({round(w, 9) for w in waits}) == len(waits)  # jittered
    assert agent.backoff(10_000, 30.0, rng) <= 30.0  # no overflow after a long outage


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--every", "0s", "'0s' is not a duration from 1s to 24h"),
        ("--every", "soon", "'soon' is not a duration from 1s to 24h"),
        ("--every", "25h", "'25h' is not a duration from 1s to 24h"),
        ("--every", "-5", "'-5' is not a duration from 1s to 24h"),
        ("--name", "DC1", "'DC1' is not an agent name"),
        ("--version", "v" * 65, "is not a text of 1 to 64 characters"),
        ("--timeout", "0", "'0' is not a number > 0"),
    ],
)
def test_a_bad_option_exits_2_with_one_error_line(option: str, value: str, message: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["agent", "heartbeat", "--name", "dc1-agent", "--api-url", "http://127.0.0.1:1", f"{option}={value}"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (error,) = [line for line in captured.err.splitlines() if not line.startswith(("usage:", " "))]
    assert error.startswith(f"barecount agent heartbeat: error: argument {option}: ") and message in error


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "barecount agent heartbeat: no API URL: give --api-url or BARECOUNT_API_URL"),
        (["--api-url", "ftp://host"], {"BARECOUNT_API_TOKEN": "tok"}, "barecount: agent heartbeat: --api-url 'ftp://host' is not an http(s) URL"),
        (["--api-url", "http://127.0.0.1:1"], {}, "barecount: agent heartbeat: no credentials: give --username and --password"),
        (["--api-url", "http://127.0.0.1:1", *[f"--capability=c{n}" for n in range(33)]], {}, "barecount agent heartbeat: 33 --capability given; at most 32"),
    ],
)
def test_missing_settings_exit_2_with_one_line(
    argv: list[str], env: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in ("BARECOUNT_API_URL", "BARECOUNT_API_USERNAME", "BARECOUNT_API_PASSWORD", "BARECOUNT_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["agent", "heartbeat", "--name", "dc1-agent", *argv]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(message)
