"""`barecount doctor` validates every [barecount] option with the option's own getter, all at once, and the
same validation is logged once when a component loads the plugin.

Before config.CHECKS, the doctor said OK for most of the values below (the getters it never called), and
stopped half-way with exit 2 on the first invalid option a sink needed.
"""

from __future__ import annotations

import importlib
import json
import logging
from pathlib import Path

import pytest

from barecount_provider import cli, config, get_provider_info

# option -> (bad value, what the doctor says is expected): the values of the issue
INVALID = {
    "enabled": ("perhaps", "a boolean (True or False)"),
    "environment": ("prod", "one of development, staging, production"),
    "task_outputs": ("sometimes", "one of auto, task, forwarder"),
    "emit_timeout_ms": ("-5", "a whole number >= 0"),
    "evidence_grace_seconds": ("abc", "a whole number >= 0"),
    "redact_value_patterns": ("[unclosed", 'a JSON list of regular expressions (["ACME-[0-9A-F]{24}"]), or empty'),
    "in_flight_interval_seconds": ("0", "a whole number >= 1"),
    "cost_local_worker_slot_hour_usd": ("cheap", "a rate in USD (a number >= 0), or empty"),
    "evidence_s3_object_lock_days": ("-1", "a whole number >= 0"),
    "statsd_port": ("abc", "a whole number from 1 to 65535"),
    "statsd_tag_style": ("graphite", "one of dogstatsd, influxdb"),
    "traces_exporter": ("zipkin", "one of otlp, file, none"),
    "file_sink_on": ("maybe", "a boolean (True or False)"),
}


def _set(monkeypatch: pytest.MonkeyPatch, **options: str) -> None:
    for name, value in options.items():
        monkeypatch.setenv(f"AIRFLOW__BARECOUNT__{name.upper()}", value)
    config.cache_clear()


def test_every_declared_option_has_a_check_and_a_getter() -> None:
    declared = get_provider_info()["config"]["barecount"]["options"]
    assert set(declared) == set(config.OPTIONS)
    for name in declared:
        assert name in config.CHECKS, f"[barecount] {name} has no entry in config.CHECKS"
        assert name in config.GETTERS, f"[barecount] {name} has no getter in config._GETTERS"
    assert list(config.CHECKS) == list(config.OPTIONS)  # one table, in the declared order


def test_the_defaults_are_valid(isolated: pytest.MonkeyPatch) -> None:
    assert config.validate() == []
    for name, (_kind, default, _example, _description) in config.OPTIONS.items():
        config.CHECKS[name].parse(default)  # raises if a default were invalid


@pytest.mark.parametrize("name", sorted(INVALID))
def test_each_getter_refuses_its_bad_value_naming_key_value_and_expected(isolated: pytest.MonkeyPatch, name: str) -> None:
    value, expected = INVALID[name]
    _set(isolated, **{name: value})
    with pytest.raises(ValueError) as error:
        config.GETTERS[name]()
    assert str(error.value).startswith(f"[barecount] {name}: {value!r} is not {expected}")
    (problem,) = config.validate()
    assert (problem.option, problem.value, problem.expected) == (name, value, expected)


def test_doctor_reports_every_invalid_option_at_once(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _set(isolated, statsd_on="True", **{name: value for name, (value, _expected) in INVALID.items()})
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"Options: {len(INVALID)} invalid" in out
    for name, (value, expected) in INVALID.items():
        assert f"INVALID {name} = {value!r}: expected {expected}" in out
    # the checks that need an invalid option are not run (and do not stop the doctor)
    assert "statsd: not checked: invalid [barecount] statsd_port, statsd_tag_style" in out
    assert "traces: not checked: invalid [barecount] traces_exporter" in out
    assert "file: not checked: invalid [barecount] file_sink_on" in out
    assert out.rstrip().endswith(f"{len(INVALID)} problem(s) found")


def test_doctor_json(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _set(isolated, **{name: value for name, (value, _expected) in INVALID.items()})
    assert cli.main(["doctor", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["problems"] == len(INVALID)
    assert {p["option"]: (p["value"], p["expected"]) for p in report["invalid_options"]} == INVALID
    statsd_port = next(p for p in report["invalid_options"] if p["option"] == "statsd_port")
    assert statsd_port["message"] == "[barecount] statsd_port: 'abc' is not a whole number from 1 to 65535"
    assert "AIRFLOW__BARECOUNT__STATSD_PORT" in statsd_port["fix"]


def test_doctor_json_when_everything_is_fine(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["doctor", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["invalid_options"] == [] and report["problems"] == 0
    assert {sink["sink"]: sink["status"] for sink in report["sinks"]}["statsd"] == "off"
    assert report["evidence"]["spooled"] == 0


@pytest.mark.parametrize("port", ["0", "65536", "70000", "-1"])
def test_a_port_out_of_range_is_invalid_not_unreachable(
    isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    _set(isolated, statsd_on="True", statsd_port=port)
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"INVALID statsd_port = {port!r}: expected a whole number from 1 to 65535" in out
    assert "UNREACHABLE" not in out
    assert "1 problem(s) found" in out


def test_a_secret_or_a_urls_password_is_never_shown(isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _set(isolated, evidence_index_url="postgresql://barecount:hunter2@db:notaport/x")
    assert cli.main(["doctor", "--json"]) == 1
    out = capsys.readouterr().out
    assert "hunter2" not in out
    (problem,) = json.loads(out)["invalid_options"]
    assert problem["option"] == "evidence_index_url" and problem["value"] == "postgresql://barecount:***@db:notaport/x"


def test_invalid_options_are_logged_once_with_the_fix(isolated: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _set(isolated, emit_timeout_ms="-5", statsd_port="70000")
    with caplog.at_level(logging.ERROR):
        config.report_problems()
        config.report_problems()
    messages = [record.getMessage() for record in caplog.records if record.name == "barecount_provider.config"]
    assert messages == [
        "BareCount configuration: [barecount] statsd_port: '70000' is not a whole number from 1 to 65535. Fix: set "
        "[barecount] statsd_port in airflow.cfg, or AIRFLOW__BARECOUNT__STATSD_PORT, to a whole number from 1 to "
        "65535 (default '8125')",
        "BareCount configuration: [barecount] emit_timeout_ms: '-5' is not a whole number >= 0. Fix: set "
        "[barecount] emit_timeout_ms in airflow.cfg, or AIRFLOW__BARECOUNT__EMIT_TIMEOUT_MS, to a whole number "
        ">= 0 (default '250')",
    ]


def test_a_component_loading_the_plugin_logs_an_invalid_option_and_does_not_raise(
    isolated: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from barecount_provider.plugins import barecount as plugin_module

    for enabled in ("True", "perhaps"):
        _set(isolated, enabled=enabled, evidence_grace_seconds="abc")
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            importlib.reload(plugin_module)  # as every Airflow process does when it loads its plugins
        logged = " | ".join(record.getMessage() for record in caplog.records)
        assert "[barecount] evidence_grace_seconds: 'abc' is not a whole number >= 0. Fix: set" in logged
        if enabled == "perhaps":
            assert "[barecount] enabled: 'perhaps' is not a boolean (True or False)" in logged
            assert plugin_module.BareCountPlugin.listeners == []
    _set(isolated, enabled="True")
    importlib.reload(plugin_module)


def test_a_pattern_that_is_not_a_regular_expression_is_invalid(isolated: pytest.MonkeyPatch) -> None:
    _set(isolated, redact_value_patterns='["ACME-[0-9A-F]{24}", "x*", "ACME-[0-9"]')
    (problem,) = config.validate()
    assert problem.option == "redact_value_patterns"
    assert "redact_value_patterns[1]: 'x*' matches the empty string" in problem.message
    _set(isolated, redact_value_patterns='["ACME-[0-9A-F]{24}", "ACME-[0-9"]')
    (problem,) = config.validate()
    assert "redact_value_patterns[1]: 'ACME-[0-9' is not a valid regular expression" in problem.message


def test_an_invalid_price_table_file_is_reported(
    isolated: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("name: acme\nversion: '1'\nprices:\n  lambda:\n    request_per_million: cheap\n")
    _set(isolated, cost_price_table_path=str(prices))
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert f"Price table {prices}: INVALID" in out and "request_per_million: 'cheap'" in out
    assert "1 problem(s) found" in out


def test_an_option_that_does_not_exist_is_reported_with_the_closest_name(
    isolated: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    isolated.setenv("AIRFLOW__BARECOUNT__STATSD_PROT", "9125")  # the port meant stays 8125, silently
    isolated.setenv("AIRFLOW__BARECOUNT__SECRET_KEY_CMD", "echo not-a-typo")  # Airflow's _cmd form of secret_key
    config.cache_clear()
    (problem,) = config.validate()
    assert (problem.option, problem.expected) == ("statsd_prot", "an option of [barecount]: statsd_port?")
    assert problem.message == "[barecount] statsd_prot: not an option of BareCount"
    assert cli.main(["doctor"]) == 1
    assert "INVALID statsd_prot = '(set)': expected an option of [barecount]: statsd_port?" in capsys.readouterr().out
