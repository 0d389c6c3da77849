"""The `barecount` command: --help everywhere, doctor's sink checks, policy validate's errors."""

from __future__ import annotations

import socket

import pytest

from barecount_provider import cli, config


@pytest.mark.parametrize("argv", [["--help"], ["doctor", "--help"], ["policy", "--help"], ["policy", "validate", "--help"], ["runs", "--help"], ["telemetry", "forward", "--help"]])
def test_every_subcommand_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    assert "usage: barecount" in capsys.readouterr().out


def _closed_udp_port() -> int:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_doctor_reports_a_statsd_sink_nobody_listens_on(monkeypatch, capsys):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(_closed_udp_port()))
    config.cache_clear()
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "statsd: udp://127.0.0.1:" in out and "UNREACHABLE" in out
    assert "source: <built-in>" in out


def test_doctor_reports_an_invalid_policy(monkeypatch, tmp_path, capsys):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\ndefaults:\n  max_size: xxl\n")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__POLICY_PATH", str(bad))
    config.cache_clear()
    assert cli.main(["doctor"]) == 1
    assert "defaults.max_size: 'xxl' is not one of xs, s, m, l, xl" in capsys.readouterr().out


def test_policy_validate_lists_every_mistake(tmp_path, capsys):
    bad = tmp_path / "policy.yaml"
    bad.write_text("version: 1\ndefaults:\n  max_size: xxl\n  trace_sampling_ratio: 2\n")
    assert cli.main(["policy", "validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "defaults.max_size: 'xxl'" in err
    assert "defaults.trace_sampling_ratio: 2" in err
    assert "2 problem(s)" in err


def test_policy_validate_accepts_the_documented_example(tmp_path, capsys):
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "policy.md").read_text()
    example = text.split("```yaml", 2)[1].split("```", 1)[0] if "```yaml" in text else ""
    path = tmp_path / "policy.yaml"
    path.write_text(example)
    assert cli.main(["policy", "validate", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_a_bad_config_value_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_TAG_STYLE", "graphite")
    config.cache_clear()
    assert cli.main(["doctor"]) == 1  # reported with the rest (it used to stop the doctor half-way, exit 2)
    out = capsys.readouterr().out
    assert "INVALID statsd_tag_style = 'graphite': expected one of dogstatsd, influxdb" in out
    assert "statsd: not checked: invalid [barecount] statsd_tag_style" in out


def test_doctor_shows_the_evidence_store_and_reports_an_unreachable_index(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"store: local {tmp_path / 'evidence'}" in out and "0 entries waiting" in out

    port = _closed_tcp_port()
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_INDEX_URL", f"postgresql+psycopg2://barecount:secret@127.0.0.1:{port}/x")
    config.cache_clear()
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "Evidence" in out and "UNREACHABLE: OperationalError" in out
    assert "secret@" not in out and "barecount:***@127.0.0.1" in out  # the URL's password is never printed


def _closed_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------------- bad option values

INT64 = "9223372036854775807"
# (command, option, value, what the error line says): before the argument types, each of these was a
# traceback (an overflow, SQLite's "Python int too large"), a silent answer (--limit -1: no limit at all,
# --last 0: every try, --until 0.5 ... refused only later) or ran with a meaningless value
BAD_VALUES = [
    (["evidence", "list"], "--since", "0001-01-01T00:00:00+01:00", "outside the supported range of times"),
    (["evidence", "list"], "--until", "9999-12-31T23:59:59-01:00", "outside the supported range of times"),
    (["evidence", "list"], "--until", "0.5", "'0.5' is neither an ISO 8601 time"),
    (["evidence", "list"], "--since", "1700000000", "'1700000000' is neither an ISO 8601 time"),
    (["evidence", "list"], "--since", "99999999999d", "reaches back before the first supported time"),
    (["evidence", "list"], "--offset", str(2**64), f"18446744073709551616 is out of range (expected a whole number from 0 to {INT64})"),
    (["evidence", "list"], "--offset", "-1", f"-1 is out of range (expected a whole number from 0 to {INT64})"),
    (["evidence", "list"], "--limit", "-1", f"-1 is out of range (expected a whole number from 1 to {INT64})"),
    (["evidence", "list"], "--limit", "0", "0 is out of range"),
    (["evidence", "list"], "--limit", "ten", "'ten' is not a whole number"),
    (["cost", "report"], "--since", "0001-01-01T00:00:00+01:00", "outside the supported range of times"),
    (["cost", "report"], "--until", "0.5", "'0.5' is neither an ISO 8601 time"),
    (["dlq", "list"], "--limit", "-1", "-1 is out of range"),
    (["dlq", "list"], "--since", "0.5", "'0.5' is neither an ISO 8601 time"),
    (["dlq", "stats"], "--until", "9999-12-31T23:59:59-01:00", "outside the supported range of times"),
    (["replay", "plan", "--target", "callable:m:f"], "--since", "0001-01-01T00:00:00+01:00", "outside the supported range"),
    (["replay", "run", "--target", "callable:m:f"], "--batch-size", "0", "0 is out of range"),
    (["replay", "run", "--target", "callable:m:f"], "--max-records", "-1", "-1 is out of range"),
    (["replay", "run", "--target", "callable:m:f"], "--rate", "-1", "'-1' is not a number > 0"),
    (["replay", "run", "--target", "callable:m:f"], "--lease-seconds", "nan", "'nan' is not a number > 0"),
    (["replay", "status"], "--runs", "-1", "-1 is out of range"),
    (["runs"], "--last", "-1", "-1 is out of range"),
    (["runs"], "--last", "0", "0 is out of range"),
    (["evidence", "seal", "--dag", "d"], "--grace", "-1", "-1 is out of range"),
    (["telemetry", "forward"], "--loop", "inf", "'inf' is not a number > 0"),
    (["telemetry", "forward"], "--parent-pid", "0", "0 is out of range"),
    (["pools", "check"], "--timeout", "-1", "'-1' is not a number > 0"),
    (["evidence", "export", "--tenant", "acme", "--out", "bundle.json"], "--since", "abc", "'abc' is neither an ISO 8601 time"),
    (["telemetry", "forward", "--check"], "--max-age", "-1", "'-1' is not a number > 0"),
    (["replay", "status"], "--lease-seconds", "0", "'0' is not a number > 0"),
]


@pytest.mark.parametrize(("command", "option", "value", "message"), BAD_VALUES)
def test_a_bad_option_value_exits_2_with_one_error_line(command, option, value, message, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*command, f"{option}={value}"])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Traceback" not in captured.err
    (error,) = [line for line in captured.err.splitlines() if not line.startswith(("usage:", " "))]
    prog = " ".join(["barecount", *(word for word in command[:2] if not word.startswith("-"))])
    assert error.startswith(f"{prog}: error: argument {option}: ")
    assert message in error


def test_the_largest_values_are_accepted(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("AIRFLOW__BARECOUNT__EVIDENCE_DIR", str(tmp_path / "evidence"))
    config.cache_clear()
    argv = ["evidence", "list", f"--offset={INT64}", f"--limit={INT64}", "--since=0001-01-02T00:00:00+23:59", "--json"]
    assert cli.main(argv) == 0
    assert '"total_entries": 0' in capsys.readouterr().out
