"""The listener is thin and defensive, and the master switch registers nothing."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

from airflow._shared.listeners.listener import ListenerManager
from airflow._shared.listeners.spec import taskinstance

from barecount_provider.listeners import lifecycle
from barecount_provider.runtime import task_side
from barecount_provider.telemetry import metrics


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


def test_a_try_failed_by_the_scheduler_is_counted_off_the_calling_thread(monkeypatch):
    """Heartbeat timeouts and kills reach the listener with an ORM TaskInstance, outside any task process."""
    import threading

    from barecount_provider.runtime import scheduler_side

    side = scheduler_side.SchedulerSide()
    monkeypatch.setattr(scheduler_side, "get_scheduler_side", lambda: side)
    workers: list[str] = []
    monkeypatch.setattr(side, "tenant_of", lambda dag_id, dag=None, conf_keys=frozenset(): (workers.append(threading.current_thread().name), ("acme", "orders"))[1])
    monkeypatch.setattr(side, "opted_out", lambda dag_id: False)
    sent: list = []
    monkeypatch.setattr(scheduler_side, "get_emitter", lambda: SimpleNamespace(emit=sent.extend, report_failures=lambda: None, flush=lambda *a: None, describe=dict))
    monkeypatch.setenv("AIRFLOW__BARECOUNT__FILE_SINK_ON", "False")
    orm_ti = SimpleNamespace(dag_id="etl", run_id="r", task_id="load", map_index=-1, try_number=1)
    lifecycle.on_task_instance_failed(previous_state=None, task_instance=orm_ti, error=None)
    assert side.drain(timeout_s=5)
    assert workers == ["barecount-scheduler-side"]
    names = {(name, tags.get("state"), tags.get("error_class")) for name, _, _, tags in sent}
    assert ("barecount.task.finished", "failed", None) in names
    assert ("barecount.task.failures", None, "KilledByScheduler") in names
