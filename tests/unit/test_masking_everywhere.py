"""Masking is active in every process that supervises tasks, with Airflow's defaults (issue 21): what the doctor
says about it. The fresh worker interpreters are in tests/integration/test_masking_everywhere.py.

A Celery worker (``airflow celery worker``) imports Airflow, which runs ``settings.initialize()``, and with
``[core] lazy_load_plugins = True`` (the default) never loads BareCount's plugin. Airflow loads the
``airflow.policy`` entry points there, though: :mod:`barecount_provider.cluster_policies` extends the masker when it
is imported. Each test runs a fresh interpreter with its own AIRFLOW_HOME, as a worker starts.
"""

from __future__ import annotations


def test_doctor_says_where_masking_is_active(monkeypatch):
    import airflow  # noqa: F401  (settings load: the policy entry point extends the masker)

    from barecount_provider import cluster_policies, redaction
    from barecount_provider.cli import doctor

    masking = doctor._doctor_masking()
    assert masking["entry_point"] is True
    assert masking["at_settings_load"] is True
    assert "settings load" in masking["status"] and "airflow.policy" in masking["status"]

    monkeypatch.setattr(cluster_policies, "MASKER_EXTENDED_AT_SETTINGS_LOAD", False)
    assert "plugin load only" in doctor._doctor_masking()["status"]
    already = redaction.is_installed_in_airflow_masker()
    redaction.uninstall_from_airflow_masker()
    try:
        assert doctor._doctor_masking()["status"].startswith("NOT extended")
    finally:
        if already:
            redaction.install_in_airflow_masker()
