"""The generation backend interface, and what every backend shares: sampling settings, the result
of one answer, adapters (fetching, checking), stop strings cut from streamed text."""

from __future__ import annotations

import asyncio
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.models import ResolvedModel
from ragtune.runtime import is_storage_uri

if TYPE_CHECKING:
    from ragtune.config import GeneratorConfig

Messages = list[dict[str, str]]


class AdapterError(ValueError):
    """An adapter directory is missing, incomplete, or was trained for another base model."""


@dataclass
class SamplingParams:
    """OpenAI-style decoding settings; temperature 0 is greedy."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"


class GenerationBackend(ABC):
    """A chat model with LoRA adapters, as serving, comparison and every other text generator use it.

    An adapter is loaded into a *slot* (a name the caller picks) and chosen per call by that slot;
    ``None`` is the base model. Calls are coroutines, so that one replica can keep many
    conversations in flight: a backend that decodes several at once (continuous or dynamic
    batching) does so for concurrent calls. A backend is ``ragtune.generation.<name>.Backend``,
    configured by the ``generator.<name>`` section and told how many adapter slots its caller keeps
    loaded (``slots``).
    """

    context_length: int  # the tokens the model attends over: prompt plus reply

    def __init__(self, cfg: GeneratorConfig, slots: int):
        self.cfg = cfg

    def _resolve_model(self) -> ResolvedModel:
        """``generator.model`` resolved on this node; sets ``model_info``, ``context_length`` and
        ``tokenizer`` (loaded now: transformers' lazy imports are not safe on concurrent first calls)."""
        from ragtune.data.render import load_chat_tokenizer
        from ragtune.models import context_length, resolve

        self.model_info = resolve(self.cfg.model)
        self.context_length = context_length(self.model_info)
        self.tokenizer = load_chat_tokenizer(self.model_info)
        return self.model_info

    @abstractmethod
    async def load_adapter(self, slot: str, path: str | Path) -> None:
        """Load the PEFT adapter in ``path`` (as ``ragtune train`` writes it) into ``slot``.

        Raises:
            AdapterError: no adapter there, or it was trained for another base model.
        """

    @abstractmethod
    def unload_adapter(self, slot: str) -> None:
        """Free the slot's adapter (an unknown slot is ignored)."""

    @abstractmethod
    def stream(self, messages: Messages, params: SamplingParams, slot: str | None = None) -> AsyncIterator[str | Completion]:
        """The reply as text pieces while it is generated, then its ``Completion``. Closing the
        iterator early (the client went away, a timeout) stops the generation.

        Raises:
            AdapterError: nothing is loaded in ``slot``.
        """

    async def complete(self, messages: Messages, params: SamplingParams, slot: str | None = None) -> Completion:
        """The whole reply; cancelling the call stops its generation."""
        return await completion_of(self.stream(messages, params, slot))

    async def generate(self, conversations: list[Messages], params: SamplingParams,
                       slot: str | None = None) -> list[Completion]:
        """The reply to each conversation, in order (evaluation, batch generation): all submitted at
        once, so a batching backend decodes them together."""
        return list(await asyncio.gather(*(self.complete(c, params, slot) for c in conversations)))

    def prompt_tokens(self, messages: Messages) -> int:
        """The tokens of ``messages`` as the model is prompted with them (chat template applied)."""
        return len(self.prompt_ids(messages))

    def prompt_ids(self, messages: Messages) -> list[int]:
        """The prompt's token ids: the chat template with the assistant turn opened."""
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def close(self) -> None:
        """Stop what the backend runs beside the caller (engine threads); the default has none."""


class ThreadedBackend(GenerationBackend):
    """A backend whose model blocks: ``self.model`` has ``load_adapter(slot, path)``,
    ``unload_adapter(slot)`` and ``stream(messages, params, slot, cancel)`` (a generator of pieces,
    then the Completion); its calls run on worker threads, and a closed stream sets ``cancel`` so
    that the generation stops at its next token."""

    model: object

    async def load_adapter(self, slot: str, path: str | Path) -> None:
        await asyncio.to_thread(self.model.load_adapter, slot, path)

    def unload_adapter(self, slot: str) -> None:
        self.model.unload_adapter(slot)

    async def stream(self, messages: Messages, params: SamplingParams,
                     slot: str | None = None) -> AsyncIterator[str | Completion]:
        cancel = threading.Event()
        pieces = self.model.stream(messages, params, slot, cancel)
        done = object()
        try:
            while (item := await asyncio.to_thread(next, pieces, done)) is not done:
                yield item
        finally:
            cancel.set()


class Turn:
    """One conversation in a backend's decoding thread: its prompt and settings; what the thread
    produces (text pieces, then ``(finish_reason, completion_tokens)``, or an exception) is handed to
    the caller's event loop; ``turn_pieces`` reads it."""

    def __init__(self, ids: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop):
        self.ids, self.params, self.loop = ids, params, loop
        self.items: asyncio.Queue = asyncio.Queue()
        self.tokens = 0

    def put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the caller's event loop is closed: nobody waits for this turn any more
            pass


async def turn_pieces(turn: Turn, cancel) -> AsyncIterator[str | Completion]:
    """A submitted turn's text pieces, cut at its stop strings, then its Completion; at a stop
    string, or closed early, the turn is cancelled (``cancel()``)."""
    stop, ended = StopText(turn.params.stop), None
    try:
        while True:
            item = await turn.items.get()
            if isinstance(item, Exception):
                raise item
            if isinstance(item, tuple):
                ended = item
                break
            if (ready := stop.add(item)):
                yield ready
            if stop.stopped:
                break
    finally:
        if ended is None:
            cancel()
    if (ready := stop.rest()):
        yield ready
    reason, tokens = ended or ("stop", turn.tokens)
    yield Completion(text=stop.text, prompt_tokens=len(turn.ids), completion_tokens=tokens,
                     finish_reason="stop" if stop.stopped else reason)


async def completion_of(stream: AsyncIterator[str | Completion]) -> Completion:
    """The Completion a reply's stream ends with; the stream is closed however this ends."""
    try:
        async for item in stream:
            if isinstance(item, Completion):
                return item
    finally:
        await stream.aclose()
    raise RuntimeError("the generation ended without a result")


class StopText:
    """A reply's text as it streams, cut at the first stop string. Text is held back by the longest
    stop string minus one character, so that a stop string split across pieces is never partly
    sent (OpenAI leaves it out of the reply)."""

    def __init__(self, stop: list[str]):
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.text, self.sent, self.stopped = "", 0, False

    def add(self, piece: str) -> str:
        """The text ready to send after ``piece`` ("" after a stop string)."""
        if self.stopped:
            return ""
        self.text += piece
        cuts = [i for s in self.stop if (i := self.text.find(s)) != -1]
        if cuts:
            self.text, self.stopped = self.text[:min(cuts)], True
        ready = len(self.text) if self.stopped else len(self.text) - self.hold
        return self._take(ready)

    def rest(self) -> str:
        """What is still held back, once the reply has ended."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        piece, self.sent = self.text[self.sent:upto], upto
        return piece


def fetch_adapter(ref: str | Path) -> Path:
    """A local directory holding the adapter ``ref``: a directory as it is; from storage
    (``s3://…/<name>``) copied into this node's $RAGTUNE_HOME/adapter_cache on every call, so that an
    adapter published again under the same name is the one loaded.

    Raises:
        AdapterError: no adapter (adapter_config.json) at that URI.
    """
    text = str(ref)
    if not is_storage_uri(text):
        return Path(text).expanduser()
    import os
    import re
    import shutil

    from pyarrow import fs

    from ragtune.config import ragtune_home

    filesystem, base = fs.FileSystem.from_uri(text.rstrip("/"))
    if filesystem.get_file_info(f"{base}/adapter_config.json").type != fs.FileType.File:
        raise AdapterError(f"{text} holds no adapter (adapter_config.json is missing)")
    # per process: replicas on one node may fetch the same adapter at once
    target = ragtune_home() / "adapter_cache" / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', text.rstrip('/'))}.{os.getpid()}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)  # pyarrow creates no local directories
    fs.copy_files(base, str(target), source_filesystem=filesystem, destination_filesystem=fs.LocalFileSystem())
    return target


def check_adapter(path: str | Path, base: ResolvedModel | None, name: str) -> Path:
    """``path`` as a Path, once it holds a PEFT adapter trained for ``base`` (any base: None).

    Raises:
        AdapterError: no adapter there, or it was trained for another base model.
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise AdapterError(f"{path} holds no adapter (adapter_config.json is missing)")
    if base is None:
        return path
    trained_for = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if trained_for and trained_for != base.name and Path(trained_for).resolve() != Path(base.path).resolve():
        raise AdapterError(f"adapter {name!r} was trained for {trained_for}, not {base.name}: serve it "
                           "with that base model")
    return path
