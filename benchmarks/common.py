"""Shared by the benchmark scripts (run as `python benchmarks/<name>.py`, so this imports as `common`)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_milvus() -> Iterator[int]:
    """A milvus-lite server of this run on a free port (in $RAGTUNE_HOME, set it first); stopped at the end."""
    from ragtune.store.local import ensure_local_server, stop_local_server

    port = free_port()
    ensure_local_server(port)
    try:
        yield port
    finally:
        stop_local_server()


def timed(stages: dict[str, float], name: str, work: Callable[[], object]) -> object:
    """Run ``work``, record its wall time in ``stages[name]`` (seconds, 0.1 s) and return its result."""
    started = time.perf_counter()
    result = work()
    stages[name] = round(time.perf_counter() - started, 1)
    return result


def tokens_per_second(generate: Callable[[object], int], items: Iterable[object]) -> dict[str, float]:
    """Completion tokens/s of ``generate`` (returns the tokens of one item) over ``items``, after
    one warm-up call on the first item."""
    items = list(items)
    generate(items[0])
    started = time.perf_counter()
    tokens = sum(generate(item) for item in items)
    wall = time.perf_counter() - started
    return {"completion_tokens": tokens, "wall_s": round(wall, 2), "tokens_per_s": round(tokens / wall, 2)}
