"""Airflow connections as every BareCount process resolves them, in a task or not.

:func:`get_connection` is the one lookup for the evidence store, the checkpoint writer, the forwarder,
``barecount doctor``, the dead-letter queues and the replay targets; :func:`hook` makes any of the amazon
provider's hooks (``S3Hook``, ``SqsHook``, ``LambdaHook``) look its connection up there, and :func:`s3_client`
is the one S3 client built on it.

- In a task (the Task SDK's supervisor link is up): the Task SDK's lookup, as any hook in a task does
  (``[secrets] backend``, then the environment, then the metadata database through the supervisor).
- Anywhere else (``barecount telemetry forward``, the CLI, the scheduler's component): Airflow's own lookup
  for processes that run outside a task, ``airflow.models.connection.Connection.get_connection_from_secrets``
  (``[secrets] backend``, then ``AIRFLOW_CONN_*`` environment variables, then the metadata database).

On both paths Airflow registers the connection's password and extra with its secrets masker.

Why: since Airflow 3, ``BaseHook.get_connection`` always goes through the Task SDK; outside a task the SDK
falls back to the environment and external backends only (no metadata database), so a connection created with
``airflow connections add`` or in the UI was "not found", and the amazon hooks went on with no credentials
(``NoCredentialsError`` at the first S3 call).
"""

from __future__ import annotations

import functools
from typing import Any

from barecount_provider.adapters import airflow as airflow_adapter


def in_task_process() -> bool:
    """Whether this process is a task run by the Task SDK (its supervisor link is set)."""
    return airflow_adapter.in_supervised_task_process()


def get_connection(conn_id: str) -> Any:
    """Airflow connection ``conn_id``; raises ``AirflowNotFoundException`` when no backend holds it."""
    if in_task_process():
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    from airflow.models.connection import Connection

    return Connection.get_connection_from_secrets(conn_id)


def hook(hook_class: Any, **hook_kwargs: Any) -> Any:
    """An instance of ``hook_class`` (an Airflow hook: ``S3Hook``, ``SqsHook``, ``LambdaHook``...) built with
    ``hook_kwargs`` (e.g. ``aws_conn_id``), whose connection comes from :func:`get_connection`."""
    return _connected(hook_class)(**hook_kwargs)


def s3_client(conn_id: str, **hook_kwargs: Any) -> Any:
    """A boto3 S3 client from the amazon provider's ``S3Hook`` with connection ``conn_id`` resolved by
    :func:`get_connection` (``hook_kwargs``: e.g. ``config``, a botocore ``Config``)."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return hook(S3Hook, aws_conn_id=conn_id, **hook_kwargs).get_conn()


@functools.cache
def _connected(hook_class: Any) -> Any:
    """``hook_class`` with its connection from :func:`get_connection` (``BaseHook.get_connection`` is the
    hooks' documented point to override); one subclass per hook class."""

    class Connected(hook_class):
        @classmethod
        def get_connection(cls, conn_id: str) -> Any:
            return get_connection(conn_id)

    Connected.__name__ = Connected.__qualname__ = f"BareCount{hook_class.__name__}"
    return Connected
