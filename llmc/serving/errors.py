"""A refused request, and how each family of routes says so.

A handler raises :class:`BadRequest` with a :class:`Kind`; the app renders it in the shape of the
route's API:

* OpenAI's routes (``/v1/...``): ``{"error": {"message", "type", "param", "code"}}`` with the
  kind's HTTP status (400 ``invalid_request_error`` for bad input, 404 for an unknown model, 503
  ``server_error`` when over ``--max-queue`` or still loading);
* text-embeddings-inference's routes (``/rerank``, ``/predict``, ``/classify``): ``{"error":
  message, "error_type": T}`` with TEI's status for ``T`` (``Validation`` 422 for a body that
  does not parse as the route's request (axum's answer to one), 413 for too much input, ``Empty``
  400, ``Backend`` 424 for a model that cannot do the route's task, ``Overloaded`` 429,
  ``Unhealthy`` 503).
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Kind:
    """What went wrong, as each API spells it: (HTTP status, type) for OpenAI's and TEI's routes."""

    name: str
    status: int
    openai_type: str
    tei_status: int
    tei_type: str


INVALID = Kind("invalid", 400, "invalid_request_error", 422, "Validation")
TOO_LARGE = Kind("too_large", 413, "invalid_request_error", 413, "Validation")
EMPTY = Kind("empty", 400, "invalid_request_error", 400, "Empty")
MODEL_NOT_FOUND = Kind("model_not_found", 404, "invalid_request_error", 404, "Validation")
UNSUPPORTED = Kind("unsupported", 404, "invalid_request_error", 424, "Backend")  # not this model's task
OVERLOADED = Kind("overloaded", 503, "server_error", 429, "Overloaded")
LOADING = Kind("loading", 503, "server_error", 503, "Unhealthy")
CLIENT_GONE = Kind("client_closed_request", 499, "invalid_request_error", 499, "Canceled")  # nginx's 499: nobody reads it

_BY_STATUS = {400: INVALID, 413: TOO_LARGE, 404: UNSUPPORTED, 503: OVERLOADED}


class BadRequest(ValueError):
    """A request the server refuses, in one line: its :class:`Kind` (or an HTTP status: 400, 404,
    413, 503), the request field it is about (``param``) and a short machine-readable ``code``."""

    def __init__(
        self, message: str, status: int | Kind = INVALID, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.kind = status if isinstance(status, Kind) else _BY_STATUS.get(status, INVALID)
        self.status = self.kind.status
        self.param = param
        self.code = code if code is not None else (None if self.kind is INVALID else self.kind.name)


def openai_error(exc: BadRequest) -> tuple[int, dict[str, Any]]:
    """(status, body) of OpenAI's error object."""
    body = {"message": str(exc), "type": exc.kind.openai_type, "param": exc.param, "code": exc.code}
    return exc.kind.status, {"error": body}


def tei_error(exc: BadRequest) -> tuple[int, dict[str, Any]]:
    """(status, body) of text-embeddings-inference's error response."""
    return exc.kind.tei_status, {"error": str(exc), "error_type": exc.kind.tei_type}
