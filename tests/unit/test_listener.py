"""The listener is thin and defensive, and the master switch registers nothing."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from airflow._shared.listeners.listener import ListenerManager
from airflow._shared.listeners.spec import taskinstance

from barecount_provider.listeners import lifecycle
from barecount_provider.telemetry import metrics, task_side


class RuntimeTaskInstance(SimpleNamespace):
    """Named like Airflow's, which is how the listener recognises the task process."""




def _manager_with(*listeners):
    manager = ListenerManager()
    manager.add_hookspecs(taskinstance)
    for listener in listeners:
        manager.add_listener(listener)
    return manager


class _Recording:
    def __init__(self) -> None:
        self.seen: list[str] = []

    from airflow.listeners import hookimpl

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        self.seen.append(task_instance.task_id)


class _Raising:
    from airflow.listeners import hookimpl

    @hookimpl
    def on_task_instance_running(self, previous_state, task_instance):
        raise RuntimeError("a listener that does not guard itself")


def test_a_fault_in_barecount_is_caught_counted_and_the_next_listener_still_runs(monkeypatch):
    def broken(ti):
        raise RuntimeError("fault inside BareCount")

    monkeypatch.setattr(task_side, "on_try_running", broken)
    metrics.EMIT_FAILURES.counts.clear()
    other = _Recording()
    # pluggy calls the last registered first: BareCount runs before the other listener.
    manager = _manager_with(other, lifecycle)
    manager.hook.on_task_instance_running(previous_state=None, task_instance=RuntimeTaskInstance(task_id="t1"))
    assert other.seen == ["t1"]
    assert metrics.EMIT_FAILURES.counts[("listener", "on_task_instance_running")] == 1


def test_control_an_unguarded_listener_does_stop_pluggy():
    """Why the guard matters: without it, the listener after the faulty one never hears the event."""
    other = _Recording()
    manager = _manager_with(other, _Raising())
    try:
        manager.hook.on_task_instance_running(previous_state=None, task_instance=RuntimeTaskInstance(task_id="t1"))
    except RuntimeError:
        pass
    assert other.seen == []


def test_server_side_task_instances_are_not_treated_as_task_processes(monkeypatch):
    called = []
    monkeypatch.setattr(task_side, "on_try_running", lambda ti: called.append(ti))
    lifecycle.on_task_instance_running(previous_state=None, task_instance=SimpleNamespace(task_id="orm"))
    assert called == []


def test_master_switch_off_registers_nothing(monkeypatch):
    from barecount_provider import config
    from barecount_provider.plugins import barecount as plugin_module

    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "False")
    config.cache_clear()
    reloaded = importlib.reload(plugin_module)
    assert reloaded.BareCountPlugin.listeners == []
    monkeypatch.setenv("AIRFLOW__BARECOUNT__ENABLED", "True")
    config.cache_clear()
    reloaded = importlib.reload(plugin_module)
    assert reloaded.BareCountPlugin.listeners == [lifecycle]


def test_policy_snapshot_keeps_declared_params_when_a_run_conf_overwrites_them():
    from airflow.sdk.definitions.param import Param, ParamsDict

    from barecount_provider import context

    params = ParamsDict({"tenant": Param("globex", type="string")})
    dag = SimpleNamespace(dag_id="snap", tags=[], params=params, default_args={}, tasks=[])
    context.snapshot_declared(dag)
    params["tenant"] = "evil"  # what Airflow's process_params does with a run's conf
    assert params.get_param("tenant").value == "evil"
    assert context.declared(None, dag, "tenant") == "globex"
    context._DECLARED.pop("snap")
    # Without a snapshot, a key present in the run's conf is not trusted.
    assert context.declared(None, dag, "tenant", frozenset({"tenant"})) is None
