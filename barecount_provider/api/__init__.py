"""BareCount's Evidence API: a FastAPI app mounted by the plugin under ``/barecount`` on Airflow's API server.

Every process that loads Airflow's plugins (scheduler, dag-processor, workers, task processes) imports the
plugin module; only the API server serves the app. So the plugin registers :class:`LazyApp`, a plain ASGI
callable that imports FastAPI, Airflow's security dependencies and :mod:`barecount_provider.api.app`, and
builds the app, on the first request it receives. The other processes never pay that import.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

URL_PREFIX = "/barecount"

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class LazyApp:
    """An ASGI app that builds the Evidence API on its first request and hands every request to it."""

    def __init__(self, factory: Callable[[], Any] | None = None) -> None:
        self._factory = factory
        self._app: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        """The Evidence API's FastAPI app (built now if it was not yet)."""
        if self._app is None:
            with self._lock:
                if self._app is None:
                    factory = self._factory
                    if factory is None:
                        from barecount_provider.api.app import create_app

                        factory = create_app
                    self._app = factory()
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.get()(scope, receive, send)


def fastapi_apps() -> list[dict[str, Any]]:
    """The ``fastapi_apps`` entry of BareCount's AirflowPlugin."""
    return [{"app": LazyApp(), "url_prefix": URL_PREFIX, "name": "BareCount Evidence API"}]
