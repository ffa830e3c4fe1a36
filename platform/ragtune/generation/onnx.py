"""``generator.backend=onnx``: ONNX Runtime GenAI on CPU — weight-quantized models and its Engine,
which decodes concurrent requests together.

The model is converted once per node and cached under ``$RAGTUNE_HOME/models/onnx/`` (ONNX Runtime
GenAI's model builder, in a child process whose output goes to a ``.log`` beside the cache). An
adapter is merged into a copy of the base model before conversion, so each adapter slot is a
model of its own (260 MB at int8), converted once per adapter content, and a call picks its
slot's model.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

from ragtune.generation.base import (
    AdapterError, Completion, GenerationBackend, Messages, SamplingParams, Turn, check_adapter, completion_of, turn_pieces,
)
from ragtune.models import ResolvedModel, build_once, convert_in_child, model_digest
from ragtune.runtime import usable_cpus

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
_GATHER_S = 0.01  # how long an idle engine waits for more turns to start with the first


def _digest(base: ResolvedModel, precision: str, adapter: Path | None) -> str:
    """What a converted model depends on: the base, the adapter's content, the precision and the
    converter's version."""
    import importlib.metadata

    parts = [precision, importlib.metadata.version("onnxruntime-genai")]
    for name in _ADAPTER_FILES if adapter is not None else ():
        with open(adapter / name, "rb") as fh:
            parts.append(hashlib.file_digest(fh, "sha256").hexdigest())
    return model_digest(base, *parts)


def converted(base: ResolvedModel, precision: str, adapter: Path | None = None) -> Path:
    """The ONNX Runtime GenAI directory of ``base`` (with ``adapter`` merged) at ``precision``,
    converted now unless this node has it.

    Raises:
        RuntimeError: the conversion failed (the message ends with its log).
    """
    from ragtune.config import ragtune_home

    name = re.sub(r"[^A-Za-z0-9_.-]", "_", base.name.rsplit("/", 1)[-1])
    target = (ragtune_home() / "models" / "onnx"
              / f"{name}-{precision}{'-adapter' if adapter else ''}-{_digest(base, precision, adapter)}")

    def convert(work: Path) -> None:
        what = f"{base.name}{' with the adapter ' + str(adapter) if adapter else ''} for ONNX Runtime GenAI"
        convert_in_child("ragtune.generation.onnx", [str(base.path), str(adapter or ""), precision, str(work)],
                         target.with_name(f"{target.name}.log"), what)
        shutil.rmtree(work / "cache", ignore_errors=True)

    return build_once(target, lambda d: (d / "genai_config.json").is_file(), convert)


def _convert(base_dir: str, adapter: str, precision: str, out: str) -> None:
    """The child process of ``converted``: merge the adapter into a copy of the base, then run the
    model builder on it."""
    source, work = Path(base_dir), Path(out)
    if adapter:
        from ragtune.data.render import load_chat_tokenizer
        from ragtune.train.driver import load_adapted

        base, merged = ResolvedModel(base_dir, source), work / "cache" / "merged"
        load_adapted(base, Path(adapter)).merge_and_unload().save_pretrained(merged)
        load_chat_tokenizer(base).save_pretrained(merged)
        source = merged
    subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(work),
                    "-p", precision, "-e", "cpu", "-c", str(work / "cache"), "--extra_options", "hf_token=false"],
                   check=True)


class _Turn(Turn):
    """A Turn with its engine request and detokenizer."""

    request = turn_id = decoder = None


class _Engine:
    """One converted model on an ONNX Runtime GenAI Engine, owned by a thread of its own (the Engine
    accepts calls from the thread that made it only). Calls hand turns and cancellations to the
    thread; between steps it starts them, and while any is pending it runs the engine, which decodes
    the started turns together (up to ``generator.onnx.max_batch_size``), and passes each token on."""

    def __init__(self, path: Path, max_batch_size: int, threads: int | None):
        import onnxruntime_genai as og

        self.og = og
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._turns: dict = {}  # og.Request -> _Turn
        self._failure: BaseException | None = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._own, args=(path, max_batch_size, threads, ready), daemon=True,
                                        name=f"ort-genai {path.name}")
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            raise self._failure

    def submit(self, turn: _Turn) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the ONNX Runtime GenAI engine stopped: {self._failure}")
        self._inbox.put(("start", turn))

    def cancel(self, turn: _Turn) -> None:
        self._inbox.put(("cancel", turn))

    def close(self) -> None:
        self._inbox.put(("close", None))

    def _own(self, path: Path, max_batch_size: int, threads: int | None, ready: threading.Event) -> None:
        og = self.og
        try:
            config = og.Config(str(path))
            overlay = {"engine": {"static_batching": {"max_batch_size": max_batch_size}},
                       "model": {"decoder": {"session_options": {
                           "intra_op_num_threads": threads or usable_cpus()}}}}
            config.overlay(json.dumps(overlay))
            self.model = og.Model(config)
            self.engine = og.Engine(self.model)
            self.tokenizer = og.Tokenizer(self.model)
        except BaseException as exc:
            self._failure = exc
            ready.set()
            return
        ready.set()
        try:
            self._run()
        except BaseException as exc:  # every waiting caller gets the error, later calls too
            self._failure = exc
            for turn in list(self._turns.values()):
                turn.put(RuntimeError(f"ONNX Runtime GenAI failed: {exc}"))
            while True:
                try:
                    command, turn = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if command == "start":
                    turn.put(RuntimeError(f"ONNX Runtime GenAI failed: {exc}"))
            raise

    def _start(self, turn: _Turn) -> None:
        import numpy as np

        og, p = self.og, turn.params
        turn.request = self.engine.create_request()
        options = og.TurnOptions(turn.request)
        options.set_max_generated_tokens(p.max_tokens)
        options.set_do_sample(p.temperature > 0)
        if p.temperature > 0:
            options.set_temperature(p.temperature)
            options.set_top_p(p.top_p)
        # A seed and stop strings need the Engine's dynamic batching, which is not built for CPU: a
        # sampled reply is not reproducible by seed here, and the caller cancels the turn at a stop string.
        turn.decoder = self.tokenizer.create_stream()
        turn.turn_id = turn.request.begin_turn(np.asarray(turn.ids, dtype=np.int32), options)
        self._turns[turn.request] = turn

    def _finish(self, turn: _Turn, item) -> None:
        self._turns.pop(turn.request, None)
        turn.request.close()
        turn.put(item)

    def _run(self) -> None:
        og = self.og
        events = self.engine.create_event_buffer(1024)
        finished, failed, token = og.EngineEventFlags.TURN_FINISHED, og.EngineEventFlags.FAILED, og.EngineEventFlags.TOKEN
        while True:
            try:
                idle = not self._turns
                command, turn = self._inbox.get(block=idle)
                while True:
                    if command == "close":
                        for t in list(self._turns.values()):
                            self._finish(t, RuntimeError("the generator is shutting down"))
                        return
                    if command == "start":
                        try:
                            self._start(turn)
                        except Exception as exc:  # this turn's settings: the engine carries on
                            self._turns.pop(turn.request, None)
                            turn.put(exc)
                    elif turn.request is not None and turn.request in self._turns:
                        turn.request.cancel_turn(turn.turn_id)
                    # The Engine batches statically on CPU: a turn started after the others waits until
                    # they all end. So a first turn waits briefly for the ones arriving with it.
                    command, turn = self._inbox.get(timeout=_GATHER_S) if idle else self._inbox.get_nowait()
            except queue.Empty:
                pass
            if not self.engine.has_pending_requests():
                continue
            out = self.engine.run(events)
            for i in range(len(out)):
                event = out[i]
                turn = self._turns.get(event.request)
                if turn is None:
                    continue
                if event.flags & token and event.token is not None:
                    turn.tokens += 1
                    turn.put(turn.decoder.decode(event.token))
                if event.flags & failed:
                    self._finish(turn, RuntimeError(f"ONNX Runtime GenAI failed the request: {event.error_code}"))
                elif event.flags & finished:
                    reason = event.finish_reason
                    length = reason in (og.FinishReason.MAX_GENERATED_TOKENS, og.FinishReason.MAX_SESSION_TOKENS)
                    self._finish(turn, ("length" if length else "stop", turn.tokens))


class Backend(GenerationBackend):
    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError as exc:
            raise RuntimeError(f"generator.backend=onnx needs ONNX Runtime GenAI ({exc}), a dependency of ragtune: "
                               "install ragtune again on this node (pip install -e .), or set generator.backend=hf") from None
        self.base = self._resolve_model()
        self._engines: dict[str | None, _Engine] = {None: self._engine(converted(self.base, cfg.onnx.precision))}

    def _engine(self, path: Path) -> _Engine:
        return _Engine(path, self.cfg.onnx.max_batch_size, self.cfg.onnx.threads)

    async def load_adapter(self, slot: str, path: str | Path) -> None:
        path = check_adapter(path, self.base, slot.partition("#")[0])
        model = await asyncio.to_thread(converted, self.base, self.cfg.onnx.precision, path)
        self._engines[slot] = await asyncio.to_thread(self._engine, model)

    def unload_adapter(self, slot: str) -> None:
        engine = self._engines.pop(slot, None) if slot is not None else None
        if engine is not None:
            engine.close()

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()

    def _engine_of(self, slot: str | None) -> _Engine:
        engine = self._engines.get(slot)
        if engine is None:
            raise AdapterError(f"adapter {slot!r} is not loaded")
        return engine

    async def generate(self, conversations: list[Messages], params: SamplingParams,
                       slot: str | None = None) -> list[Completion]:
        """All conversations tokenized first, then started together: one batch."""
        engine = self._engine_of(slot)
        prompts = await asyncio.to_thread(lambda: [self.prompt_ids(c) for c in conversations])
        loop = asyncio.get_running_loop()
        turns = [_Turn(ids, params, loop) for ids in prompts]
        for turn in turns:
            engine.submit(turn)
        return list(await asyncio.gather(*(completion_of(turn_pieces(turn, partial(engine.cancel, turn))) for turn in turns)))

    async def stream(self, messages: Messages, params: SamplingParams,
                     slot: str | None = None) -> AsyncIterator[str | Completion]:
        """Closing this generator (client gone, timeout) cancels the turn in the engine."""
        engine = self._engine_of(slot)
        turn = _Turn(await asyncio.to_thread(self.prompt_ids, messages), params, asyncio.get_running_loop())
        engine.submit(turn)
        async for item in turn_pieces(turn, partial(engine.cancel, turn)):
            yield item

if __name__ == "__main__":
    _convert(*sys.argv[1:5])
