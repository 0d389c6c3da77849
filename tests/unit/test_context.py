"""RunContext resolution order and the keyed-hash identifiers."""

from __future__ import annotations

from types import SimpleNamespace

from barecount_provider import context
from barecount_provider.context import ENV_CORRELATION_ID, ENV_RUN_TOKEN, ENV_TRACEPARENT


def _dag(tags=(), params=None, default_args=None):
    return SimpleNamespace(tags=list(tags), params=params or {}, default_args=default_args or {})


def _resolve(task=None, dag=None, try_number=1, run_id="r1", map_index=-1):
    return context.resolve(task=task, dag=dag, dag_id="d", run_id=run_id, task_id="t", try_number=try_number, map_index=map_index)


def test_default_tenant_and_dag_id_as_pipeline():
    ctx = _resolve(dag=_dag())
    assert (ctx.tenant, ctx.pipeline, ctx.runner_class) == ("default", "d", "local")


def test_resolution_order_operator_then_params_then_default_args_then_tags():
    dag = _dag(tags=["tenant:fromtag", "pipeline:tagpipe"], params={"tenant": "fromparams"}, default_args={"tenant": "fromargs"})
    assert _resolve(task=SimpleNamespace(tenant="fromop", params={}), dag=dag).tenant == "fromop"
    assert _resolve(task=SimpleNamespace(params={}), dag=dag).tenant == "fromparams"
    assert _resolve(dag=_dag(tags=["tenant:fromtag"], default_args={"tenant": "fromargs"})).tenant == "fromargs"
    ctx = _resolve(dag=_dag(tags=["tenant:fromtag", "pipeline:tagpipe"]))
    assert (ctx.tenant, ctx.pipeline) == ("fromtag", "tagpipe")


def test_declared_param_default_is_used_not_a_runtime_value():
    from airflow.sdk.definitions.param import Param, ParamsDict

    params = ParamsDict({"tenant": Param("globex", type="string")})
    assert _resolve(dag=_dag(params=params)).tenant == "globex"


def test_correlation_id_same_for_every_task_and_try_of_a_run_and_differs_between_runs():
    a = _resolve(dag=_dag(), try_number=1)
    b = context.resolve(task=None, dag=_dag(), dag_id="d", run_id="r1", task_id="other", try_number=3, map_index=-1)
    c = _resolve(dag=_dag(), run_id="r2")
    assert a.correlation_id == b.correlation_id != c.correlation_id


def test_run_token_unique_per_try_and_stable_for_the_same_try():
    first = _resolve(dag=_dag(), try_number=1)
    again = _resolve(dag=_dag(), try_number=1)  # e.g. the running hook after a deferral resume
    retry = _resolve(dag=_dag(), try_number=2)
    mapped = _resolve(dag=_dag(), try_number=1, map_index=3)
    assert first.run_token == again.run_token
    assert len({first.run_token, retry.run_token, mapped.run_token}) == 3
    assert len(first.run_token) == 40


def test_run_token_depends_on_the_secret_key(monkeypatch):
    from barecount_provider import config

    token = _resolve(dag=_dag()).run_token
    monkeypatch.setenv("AIRFLOW__BARECOUNT__SECRET_KEY", "another-deployment")
    config.cache_clear()
    assert _resolve(dag=_dag()).run_token != token


def test_keyed_hash_is_keyed_blake2b_and_takes_keys_longer_than_64_bytes(monkeypatch):
    import hashlib

    from barecount_provider import config

    monkeypatch.setenv("AIRFLOW__BARECOUNT__SECRET_KEY", "k" * 64)
    config.cache_clear()
    expected = hashlib.blake2b(b"purpose\x1fa\x1f1", key=b"k" * 64, digest_size=32, person=b"barecount").hexdigest()
    assert context.keyed_hex("purpose", "a", 1, length=64) == expected
    assert context.keyed_hex("purpose", "a", 1) == expected[:32]
    tokens = set()
    for key in ("k" * 65, "k" * 64 + "j", "k" * 200):  # longer than BLAKE2b's key: hashed to 64 bytes first
        monkeypatch.setenv("AIRFLOW__BARECOUNT__SECRET_KEY", key)
        config.cache_clear()
        tokens.add(context.keyed_hex("purpose", "a", 1))
    assert len(tokens | {expected[:32]}) == 4


def test_opt_out_by_tag_or_declared_param():
    assert context.is_opted_out(_dag(tags=["barecount:off"]))
    assert context.is_opted_out(_dag(params={"barecount_enabled": False}))
    assert not context.is_opted_out(_dag(tags=["tenant:acme"]))


def test_environment_export():
    env: dict[str, str] = {}
    ctx = _resolve(dag=_dag()).with_trace("00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    ctx.export_to_environment(env)
    assert env[ENV_CORRELATION_ID] == ctx.correlation_id
    assert env[ENV_RUN_TOKEN] == ctx.run_token
    assert env[ENV_TRACEPARENT].startswith("00-1111")


def test_metric_tags_never_hold_unbounded_values():
    tags = _resolve(dag=_dag()).metric_tags(state="success")
    assert set(tags) == {"tenant", "pipeline", "runner_class", "size", "dag_id", "task_id", "state"}


def test_declared_values_reads_each_source_once_for_all_keys_in_the_documented_order():
    """declared_values reads each source once for several keys; each key comes from the first source that
    declares it (operator, task params, DAG params, default_args, tags), an empty value declaring nothing."""
    keys = ("tenant", "pipeline", "size", "network_profile")
    dag = _dag(
        tags=["tenant:fromtag", "pipeline:tagpipe", "network_profile:vpn", "size:"],
        params={"pipeline": "fromparams"},
        default_args={"size": "l", "tenant": ""},
    )
    from_dag = {"tenant": "fromtag", "pipeline": "fromparams", "size": "l", "network_profile": "vpn"}
    assert context.declared_values(None, dag, keys) == from_dag
    assert context.declared_values(SimpleNamespace(params={}), dag, keys) == from_dag
    task = SimpleNamespace(tenant="fromop", params={"size": "xl"})
    assert context.declared_values(task, dag, keys) == {**from_dag, "tenant": "fromop", "size": "xl"}
    assert [context.declared(task, dag, key) for key in keys] == ["fromop", "fromparams", "xl", "vpn"]
    assert context.declared_values(None, _dag(), keys) == dict.fromkeys(keys)
