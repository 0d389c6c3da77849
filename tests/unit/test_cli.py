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


def test_doctor_is_happy_with_a_listening_statsd(monkeypatch, capsys):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    try:
        monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_ON", "True")
        monkeypatch.setenv("AIRFLOW__BARECOUNT__STATSD_PORT", str(listener.getsockname()[1]))
        config.cache_clear()
        assert cli.main(["doctor"]) == 0
        assert "OK" in capsys.readouterr().out
    finally:
        listener.close()


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
    assert cli.main(["doctor"]) == 2
    assert "statsd_tag_style: 'graphite' is not one of dogstatsd, influxdb" in capsys.readouterr().err


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
