"""``generator.backend=fake``: a test double with no model, for tests of what surrounds generation —
the HTTP plumbing (queues, timeouts, cancellation), the comparison's arithmetic, the demo's stages.

The reply is the last message's words, cycled up to ``max_tokens`` (after ``[<adapter>]`` when an
adapter answers), one word per ``generator.fake.token_interval_s``; while ``gate_file`` is set and
does not exist, an answer waits before its first word. Answers are serialized, so an answer that
is not cancelled keeps the next one waiting — what tests of timeouts and hang-ups check without
depending on the machine's speed. A token is a word.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

from ragtune.generation.base import AdapterError, Completion, Messages, SamplingParams, ThreadedBackend, check_adapter


class FakeModel:
    _POLL_S = 0.02

    def __init__(self, token_interval_s: float = 0.0, gate_file: str | Path | None = None):
        self.token_interval_s = token_interval_s
        self.gate_file = Path(gate_file) if gate_file else None
        self.adapters: dict[str, str] = {}
        self._lock = threading.Lock()

    def load_adapter(self, slot: str, path: str | Path) -> None:
        """Raises: AdapterError: ``path`` holds no adapter."""
        self.adapters[slot] = check_adapter(path, None, slot).name

    def unload_adapter(self, slot: str) -> None:
        self.adapters.pop(slot, None)

    def stream(self, messages: Messages, params: SamplingParams, slot: str | None,
               cancel: threading.Event) -> Iterator[str | Completion]:
        """The words come from a thread of their own, which stops at the next word once ``cancel`` is set."""
        if slot is not None and slot not in self.adapters:
            raise AdapterError(f"adapter {slot!r} is not loaded")
        words = messages[-1]["content"].split() or ["…"]
        if slot is not None:
            words = [f"[{self.adapters[slot]}]", *words]
        pieces: queue.Queue[str | None] = queue.Queue()

        def run() -> None:
            with self._lock:
                while self.gate_file is not None and not self.gate_file.exists() and not cancel.wait(self._POLL_S):
                    pass
                for i in range(params.max_tokens):
                    if cancel.is_set() or (self.token_interval_s and cancel.wait(self.token_interval_s)):
                        break
                    pieces.put(("" if i == 0 else " ") + words[i % len(words)])
            pieces.put(None)

        threading.Thread(target=run, daemon=True).start()
        sent = []
        while (piece := pieces.get()) is not None:
            sent.append(piece)
            yield piece
        yield Completion(text="".join(sent), prompt_tokens=count_words(messages), completion_tokens=len(sent),
                         finish_reason="length" if len(sent) == params.max_tokens else "stop")


def count_words(messages: Messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


class Backend(ThreadedBackend):
    context_length = 1_000_000

    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        self.model = FakeModel(cfg.fake.token_interval_s, cfg.fake.gate_file)

    def prompt_tokens(self, messages: Messages) -> int:
        return count_words(messages)
