"""Parsing untrusted files in a child process under a time and a memory limit.

A PDF that loops or inflates to gigabytes must cost one rejected file (``parse_timeout`` or
``too_large``), not a hung ingest or a dead Ray worker. One child per worker process parses file
after file; when it runs past its time or out of memory it ends, and the next file starts a new
one. Messages are JSON with the file's bytes after them (no pickle from the process that reads
untrusted data).

The child runs :func:`serve`, started by :class:`ParseSandbox` only.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
from dataclasses import asdict
from typing import IO, Any

from ragtune.core.documents import Document, Rejection, RejectReason
from ragtune.ingest.parsers import ParseOptions, Parsed, parse_file
from ragtune.ingest.sources import FileEntry

_HEADER = struct.Struct("!QQ")  # JSON length, payload length


def _write(stream: IO[bytes], message: dict[str, Any], payload: bytes = b"") -> None:
    encoded = json.dumps(message, ensure_ascii=False).encode("utf-8", errors="surrogatepass")
    view = memoryview(_HEADER.pack(len(encoded), len(payload)) + encoded + payload)
    while view:  # an unbuffered pipe may take part of it
        view = view[stream.write(view):]
    stream.flush()


def _read_exact(stream: IO[bytes], size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the parser process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _read(stream: IO[bytes]) -> tuple[dict[str, Any], bytes]:
    size, payload = _HEADER.unpack(_read_exact(stream, _HEADER.size))
    return json.loads(_read_exact(stream, size)), _read_exact(stream, payload)


class ParseSandbox:
    """Parses files in a reused child process; ``parse`` never raises for a file's content."""

    def __init__(self, timeout_s: float, memory_mb: int):
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self._child: subprocess.Popen | None = None

    def parse(self, entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
        child = self._child if self._child is not None and self._child.poll() is None else self._start()
        try:
            _write(child.stdin, {"entry": asdict(entry), "options": asdict(options)}, data)
            if not select.select([child.stdout], [], [], self.timeout_s)[0]:
                self.close()
                return [], [Rejection(entry.uri, RejectReason.PARSE_TIMEOUT,
                                      f"parsing took longer than validation.parse_timeout_s={self.timeout_s:g}", entry.rel)]
            message, _ = _read(child.stdout)
            if message["exhausted"]:
                self.close()  # it ran out of memory: the next file gets a fresh child
        except (EOFError, BrokenPipeError, OSError):
            self.close()  # killed by the kernel, or aborted when an allocation failed
            return [], [Rejection(entry.uri, RejectReason.TOO_LARGE,
                                  f"parsing needed more than validation.parse_memory_mb={self.memory_mb}", entry.rel)]
        return ([Document(**d) for d in message["documents"]],
                [Rejection(r["source"], RejectReason(r["reason"]), r["detail"], r["doc_id"]) for r in message["rejections"]])

    def _start(self) -> subprocess.Popen:
        self._child = subprocess.Popen(
            [sys.executable, "-c", f"from ragtune.ingest.sandbox import serve; serve({self.memory_mb * 2**20})"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env={**os.environ, "OMP_NUM_THREADS": "1"})
        return self._child

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child.wait()
            self._child = None

    def __del__(self) -> None:
        self.close()


def serve(memory_bytes: int) -> None:
    """The child: parse each file sent on stdin, answer on stdout, until stdin closes."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request, data = _read(stdin)
        except EOFError:
            return
        exhausted = False
        try:
            docs, rejects = parse_file(FileEntry(**request["entry"]), data, ParseOptions(**request["options"]))
        except MemoryError:
            exhausted = True  # what the parse left behind may keep this process near its limit
            entry = request["entry"]
            docs, rejects = [], [Rejection(entry["uri"], RejectReason.TOO_LARGE,
                                           f"parsing needed more than validation.parse_memory_mb="
                                           f"{memory_bytes // 2**20}", entry["rel"])]
        del data
        _write(stdout, {"documents": [asdict(d) for d in docs], "exhausted": exhausted,
                        "rejections": [{**asdict(r), "reason": r.reason.value} for r in rejects]})
        if exhausted:
            return

