"""A client of a running `ragtune serve` (standard library only), for `ragtune ask` and
`ragtune compare --endpoint`."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any


def model_id(base: str, adapter: str | None) -> str:
    """The model a request names: the base model, or ``<base>:<adapter>`` for a served adapter."""
    return f"{base}:{adapter}" if adapter else base


class EndpointError(RuntimeError):
    """The server answered an error (``status`` set) or could not be reached (``status`` None)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServeClient:
    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0):
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s

    def call(self, path: str, body: dict[str, Any] | None = None, retries: int = 0) -> dict[str, Any]:
        """GET (no body) or POST JSON; a 503 (overloaded, or a replica restarting) is retried
        ``retries`` times with a doubling back-off from 0.5 s.

        Raises:
            EndpointError: an error answer (its status and body in the message) or no connection.
        """
        headers = {"Content-Type": "application/json",
                   **({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})}
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(retries + 1):
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{self.url}{path}", data=data, headers=headers),
                                            timeout=self.timeout_s) as response:
                    return json.load(response)
            except urllib.error.HTTPError as exc:
                if exc.code == 503 and attempt < retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise EndpointError(f"{self.url}{path} answered {exc.code}: "
                                    f"{exc.read().decode(errors='replace')}", exc.code) from None
            except (urllib.error.URLError, OSError) as exc:
                raise EndpointError(f"cannot reach {self.url} ({exc}): start the server with `ragtune serve`") from None
        raise AssertionError("unreachable")

    def models(self) -> list[str]:
        """The served model ids: the base model first, then ``<base>:<adapter>`` for each adapter."""
        return [m["id"] for m in self.call("/v1/models")["data"]]

    def chat(self, question: str, model: str, max_tokens: int, options: dict[str, Any], retries: int = 0) -> dict[str, Any]:
        """A greedy, non-streamed answer (with ``citations`` and ``usage``)."""
        return self.call("/v1/chat/completions", {"model": model, "max_tokens": max_tokens, "temperature": 0,
                                                  "messages": [{"role": "user", "content": question}],
                                                  "ragtune": options}, retries)
