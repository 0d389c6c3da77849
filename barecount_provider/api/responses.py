"""The Evidence API's JSON answers, redacted once more on their way out (docs/logging.md, "Where redaction
runs"): what the API serves was redacted where it was made, and a secret that slipped through there (a
record sealed before a fix, a value registered only later) still never leaves the API server."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from barecount_provider.redaction import get_redactor


class RedactedJSONResponse(JSONResponse):
    """FastAPI's JSON response with every string redacted (:meth:`Redactor.redact_strings`)."""

    def render(self, content: Any) -> bytes:
        return super().render(get_redactor().redact_strings(content))
