"""JSON responses rendered by orjson.

Starlette's ``JSONResponse`` renders with the standard library's ``json``: ~300 us for one
384-float embedding on this project's 2-core machines, a fifth of the server's budget over the
model (``benchmarks.serving``); orjson renders the same bytes' meaning in ~30 us. Values are the
same Python floats either way (shortest round-trip repr), so no answer changes.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class FastJSONResponse(Response):
    """``application/json`` rendered by ``orjson.dumps``."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
