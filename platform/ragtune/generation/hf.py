"""``generator.backend=hf``: transformers on CPU or GPU, PEFT adapters loaded beside one copy of the
base model. Concurrent conversations are decoded together by one thread (dynamic batching: a batch
is gathered from what waits, left-padded, rows of different adapters picked per row), each
streamed as it grows; a batch of conversations from one caller is one batch too."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from ragtune.generation.base import (
    AdapterError, Completion, GenerationBackend, Messages, SamplingParams, StopText, Turn, check_adapter, turn_pieces,
)

_GATHER_S = 0.01  # how long an idle batcher waits for more turns to start with the first


class _Turn(Turn):
    """A Turn for the batcher: its adapter slot, the tokens it has, and how it ended."""

    def __init__(self, ids: list[int], params: SamplingParams, adapter: str | None, loop: asyncio.AbstractEventLoop):
        super().__init__(ids, params, loop)
        self.adapter, self.cancelled, self.ended = adapter, False, None
        self.new: list[int] = []
        self.sent = 0

    def cancel(self) -> None:
        self.cancelled = True

    def step(self, token: int, end_of_turn: bool, tokenizer) -> None:
        """One generated token: its text is passed on once it is whole (not a partial UTF-8 sequence)."""
        self.tokens += 1
        if end_of_turn:
            return self.finish("stop", tokenizer)
        self.new.append(token)
        text = tokenizer.decode(self.new, skip_special_tokens=True)
        if not text.endswith("\ufffd"):
            self._send(text)
        if self.tokens >= self.params.max_tokens:
            self.finish("length", tokenizer)

    def finish(self, reason: str, tokenizer) -> None:
        self._send(tokenizer.decode(self.new, skip_special_tokens=True))
        self.ended = reason
        self.put((reason, self.tokens))

    def fail(self, exc: BaseException) -> None:
        self.ended = "error"
        self.put(exc)

    def _send(self, text: str) -> None:
        if len(text) > self.sent:
            self.put(text[self.sent:])
            self.sent = len(text)


class TransformersModel:
    """A causal LM with its chat template, and the LoRA adapters loaded onto it (blocking calls)."""

    def __init__(self, model_info, tokenizer, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM

        from ragtune.embedding import pick_device

        self.model_info = model_info
        self.device = pick_device(device)
        self.tokenizer = tokenizer
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            model_info.path, dtype=dtype, trust_remote_code=model_info.trust_remote_code).to(self.device).eval()
        self.adapters: set[str] = set()
        self._lock = threading.Lock()

    def load_adapter(self, name: str, path: str | Path) -> None:
        from peft import PeftModel

        path = check_adapter(path, self.model_info, name.partition("#")[0])
        with self._lock:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=name).eval()
            self.adapters.add(name)

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's weights; the last one unloaded leaves the plain base model."""
        with self._lock:
            if name not in self.adapters:
                return
            self.adapters.discard(name)
            if self.adapters:
                self.model.set_adapter(next(iter(self.adapters)))
                self.model.delete_adapter(name)
            else:
                self.model = self.model.unload()

    def check_loaded(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise AdapterError(f"adapter {adapter!r} is not loaded")

    @property
    def _eos_ids(self) -> list[int]:
        configured = self.model.generation_config.eos_token_id
        return [self.tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]

    @contextmanager
    def _active(self, adapters: set[str | None]) -> Iterator[None]:
        """The batch's ``adapters`` active for the block: one adapter (None: the base model) set on
        the model, several picked per row by the caller's ``adapter_names``."""
        for name in adapters:
            self.check_loaded(name)
        if len(adapters) > 1 or (adapters == {None} and not self.adapters):
            yield
        elif adapters == {None}:
            with self.model.disable_adapter():
                yield
        else:
            self.model.set_adapter(next(iter(adapters)))
            yield

    def _sampling(self, params: SamplingParams) -> dict:
        import torch

        kwargs = {"max_new_tokens": params.max_tokens, "pad_token_id": self.tokenizer.pad_token_id}
        if params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p)
            if params.seed is not None:
                torch.manual_seed(params.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if params.stop:
            kwargs.update(stop_strings=params.stop, tokenizer=self.tokenizer)
        return kwargs

    def _encode(self, conversations: list[Messages]):
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        return self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left",
                              add_special_tokens=False).to(self.device)

    def decode(self, turns: list[_Turn]) -> None:
        """Decode ``turns`` (one sampling setting, any adapters) together, left-padded, each turn's
        text passed on as it grows; a turn ends at its end of turn, its ``max_tokens`` or when
        cancelled, and the batch when all have ended."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        width = max(len(t.ids) for t in turns)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(t.ids)) + t.ids for t in turns], device=self.device)
        mask = torch.tensor([[0] * (width - len(t.ids)) + [1] * len(t.ids) for t in turns], device=self.device)
        eos = set(self._eos_ids)
        tokenizer = self.tokenizer

        class Rows(BaseStreamer):
            """Each step's tokens (the first call is the prompt), passed on per turn as text."""

            first = True

            def put(self, value):
                if self.first:
                    self.first = False
                    return
                for turn, token in zip(turns, value.view(-1).tolist()):
                    if turn.ended is None:
                        turn.step(token, token in eos, tokenizer)

            def end(self):
                for turn in turns:
                    if turn.ended is None:
                        turn.finish("length", tokenizer)

        class Ended(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor([t.ended is not None or t.cancelled for t in turns], device=input_ids.device)

        adapters = {t.adapter for t in turns}
        mixed = {"adapter_names": [t.adapter or "__base__" for t in turns]} if len(adapters) > 1 else {}
        params = turns[0].params
        kwargs = self._sampling(SamplingParams(max_tokens=max(t.params.max_tokens for t in turns),
                                               temperature=params.temperature, top_p=params.top_p, seed=params.seed))
        with self._lock, self._active(adapters), torch.no_grad():
            self.model.generate(input_ids=ids, attention_mask=mask, streamer=Rows(),
                                stopping_criteria=StoppingCriteriaList([Ended()]), **mixed, **kwargs)

    def generate(self, conversations: list[Messages], params: SamplingParams, adapter: str | None) -> list[Completion]:
        """The reply to each conversation, all decoded together (left-padded)."""
        import torch

        self.check_loaded(adapter)
        enc = self._encode(conversations)
        with self._lock, self._active({adapter}), torch.no_grad():
            out = self.model.generate(**enc, **self._sampling(params))
        replies, eos = [], self.tokenizer.eos_token_id
        for mask, new in zip(enc["attention_mask"], out[:, enc["input_ids"].shape[1]:]):
            ended = (new == eos).nonzero()
            length = int(ended[0, 0]) + 1 if len(ended) else len(new)  # up to and with the end of turn
            stop = StopText(params.stop)
            stop.add(self.tokenizer.decode(new[:length], skip_special_tokens=True))
            replies.append(Completion(text=stop.text.strip(), prompt_tokens=int(mask.sum()), completion_tokens=length,
                                      finish_reason="stop" if len(ended) or stop.stopped else "length"))
        return replies


class _Batcher:
    """The thread that decodes. Turns submitted while it is idle are gathered for ``_GATHER_S``;
    turns arriving during a batch wait for the next one. A batch holds up to ``max_batch_size``
    turns of one sampling setting; a sampled turn with a seed runs alone, so that its seed holds."""

    def __init__(self, model: TransformersModel, max_batch_size: int):
        self.model, self.max_batch_size = model, max_batch_size
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list[_Turn] = []
        threading.Thread(target=self._run, daemon=True, name="hf batcher").start()

    def submit(self, turn: _Turn) -> None:
        self._inbox.put(turn)

    def close(self) -> None:
        self._inbox.put(None)

    def _run(self) -> None:
        while True:
            try:
                if not self._waiting:
                    self._take(self._inbox.get())
                    deadline = time.monotonic() + _GATHER_S
                    while (left := deadline - time.monotonic()) > 0:
                        self._take(self._inbox.get(timeout=left))
                while True:
                    self._take(self._inbox.get_nowait())
            except queue.Empty:
                pass
            except _Closed:
                for turn in self._waiting:
                    turn.fail(RuntimeError("the generator is shutting down"))
                return
            batch = self._next_batch()
            try:
                if batch:
                    self.model.decode(batch)
            except Exception as exc:  # this batch's error: the turns after it carry on
                for turn in batch:
                    if turn.ended is None:
                        turn.fail(exc)

    def _take(self, turn: _Turn | None) -> None:
        if turn is None:
            raise _Closed
        self._waiting.append(turn)

    def _next_batch(self) -> list[_Turn]:
        def setting(turn: _Turn):
            p = turn.params
            return ("greedy",) if p.temperature <= 0 else (p.temperature, p.top_p, id(turn) if p.seed is not None else None)

        self._waiting = [t for t in self._waiting if not t.cancelled]
        for turn in [t for t in self._waiting if t.adapter is not None and t.adapter not in self.model.adapters]:
            turn.fail(AdapterError(f"adapter {turn.adapter!r} is not loaded"))
        self._waiting = [t for t in self._waiting if t.ended is None]
        if not self._waiting:
            return []
        key = setting(self._waiting[0])
        batch = [t for t in self._waiting if setting(t) == key][:self.max_batch_size]
        self._waiting = [t for t in self._waiting if t not in batch]
        return batch


class _Closed(Exception):
    """The batcher was closed."""


class Backend(GenerationBackend):
    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        self.model = TransformersModel(self._resolve_model(), self.tokenizer, cfg.hf.device)
        self._batcher = _Batcher(self.model, cfg.hf.max_batch_size)

    async def load_adapter(self, slot: str, path: str | Path) -> None:
        await asyncio.to_thread(self.model.load_adapter, slot, path)

    def unload_adapter(self, slot: str) -> None:
        self.model.unload_adapter(slot)

    def close(self) -> None:
        self._batcher.close()

    async def stream(self, messages: Messages, params: SamplingParams,
                     slot: str | None = None) -> AsyncIterator[str | Completion]:
        """Decoded with the turns that wait with it; closing this generator cancels the turn."""
        self.model.check_loaded(slot)
        turn = _Turn(await asyncio.to_thread(self.prompt_ids, messages), params, slot, asyncio.get_running_loop())
        self._batcher.submit(turn)
        async for item in turn_pieces(turn, turn.cancel):
            yield item

    async def generate(self, conversations: list[Messages], params: SamplingParams,
                       slot: str | None = None) -> list[Completion]:
        """One left-padded batch of all ``conversations`` (the caller sizes it)."""
        return await asyncio.to_thread(self.model.generate, conversations, params, slot)
