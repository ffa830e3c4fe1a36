"""``generator.backend=endpoint``: generation by a server with OpenAI's chat completions API — a
`ragtune serve`, a vLLM server, a hosted API — for what generates in batches (synth, compare, the
judge) with a model this machine does not hold.

Each reply is one streamed request (``stream_options.include_usage`` gives its token counts);
``generator.endpoint.concurrency`` requests are in flight at a time, and a 429 or 503 is retried
with a doubling back-off. An adapter is named on the server as ``<model>:<adapter directory's
name>`` (as `ragtune serve` lists it in ``GET /v1/models``); loading one checks that the server
serves it. With ``ragtune_server`` each request asks `ragtune serve` for mode base (ft with an
adapter), so that the server adds no retrieved passages to the messages it is given.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ragtune.generation.base import AdapterError, Completion, Messages, SamplingParams, ThreadedBackend

_RETRIED = (429, 503)


class EndpointError(RuntimeError):
    """The server answered an error, or could not be reached."""


class EndpointModel:
    def __init__(self, cfg, model: str):
        self.base_url = cfg.base_url.rstrip("/")
        self.model = cfg.model or model
        self.key = os.environ.get(cfg.api_key_env) or None
        self.ragtune_server = cfg.ragtune_server
        self.timeout_s, self.retries = cfg.timeout_s, cfg.retries
        self.in_flight = threading.BoundedSemaphore(cfg.concurrency)
        self.adapters: dict[str, str] = {}  # slot -> the served model id

    def _request(self, path: str, body: dict | None = None):
        """The open response to a GET (no body) or a JSON POST; 429 and 503 retried.

        Raises:
            EndpointError: an error answer (its status and body in the message), or no connection.
        """
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}
        data = json.dumps(body).encode() if body is not None else None
        for attempt in range(self.retries + 1):
            try:
                return urllib.request.urlopen(urllib.request.Request(f"{self.base_url}{path}", data=data, headers=headers),
                                              timeout=self.timeout_s)
            except urllib.error.HTTPError as exc:
                if exc.code in _RETRIED and attempt < self.retries:
                    time.sleep(2 ** attempt)
                    continue
                raise EndpointError(f"{self.base_url}{path} answered {exc.code}: "
                                    f"{exc.read().decode(errors='replace')[:500]}") from None
            except (urllib.error.URLError, OSError) as exc:
                raise EndpointError(f"cannot reach {self.base_url} ({exc}): check generator.endpoint.base_url") from None
        raise AssertionError("unreachable")

    def load_adapter(self, slot: str, path: str | Path) -> None:
        """Raises: AdapterError: the server does not serve ``<model>:<the directory's name>``."""
        served = f"{self.model}:{Path(str(path).rstrip('/')).name}"
        with self._request("/models") as response:
            known = [m["id"] for m in json.load(response).get("data", [])]
        if served not in known:
            raise AdapterError(f"{self.base_url} does not serve {served!r} (it serves: {', '.join(known) or 'nothing'}); "
                               "put the adapter in the server's adapter directory, or use the server's name for it")
        self.adapters[slot] = served

    def unload_adapter(self, slot: str) -> None:
        self.adapters.pop(slot, None)

    def stream(self, messages: Messages, params: SamplingParams, slot: str | None,
               cancel: threading.Event) -> Iterator[str | Completion]:
        if slot is not None and slot not in self.adapters:
            raise AdapterError(f"no adapter is loaded in slot {slot!r}")
        body = {"model": self.adapters.get(slot, self.model), "messages": messages, "max_tokens": params.max_tokens,
                "temperature": params.temperature, "top_p": params.top_p, "stream": True,
                "stream_options": {"include_usage": True}, **({"stop": params.stop} if params.stop else {}),
                **({"seed": params.seed} if params.seed is not None else {})}
        if self.ragtune_server:
            body["ragtune"] = {"mode": "ft" if slot is not None else "base"}
        pieces, usage, finish = [], {}, "stop"
        with self.in_flight, self._request("/chat/completions", body) as response:
            for line in response:  # server-sent events: "data: {chunk}" lines, then "data: [DONE]"
                if cancel.is_set():
                    return
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:  # an error after the first byte comes as an event in OpenAI's error shape
                    raise EndpointError(f"{self.base_url} stopped the reply: {json.dumps(chunk['error'])[:500]}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    if piece := (choice.get("delta") or {}).get("content"):
                        pieces.append(piece)
                        yield piece
                    finish = choice.get("finish_reason") or finish
        yield Completion(text="".join(pieces), prompt_tokens=usage.get("prompt_tokens", 0),
                         completion_tokens=usage.get("completion_tokens", len(pieces)),
                         finish_reason="length" if finish == "length" else "stop")


class Backend(ThreadedBackend):
    context_length = 1_000_000  # the server checks its own; nothing is cut here

    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        self.model = EndpointModel(cfg.endpoint, cfg.model)

    def prompt_ids(self, messages: Messages) -> list[int]:
        raise NotImplementedError("the endpoint backend has no tokenizer: the server counts the prompt's tokens")
