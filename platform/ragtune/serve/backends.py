"""Generator backends behind the ``Generator`` deployment, one async interface for all:
``load_adapter(slot, path)``, ``unload_adapter(slot)``, ``complete(messages, params, slot)`` and
``stream(messages, params, slot)`` (text pieces, then the ``Completion``).

- ``hf``: ragtune's transformers ``Generator`` (CPU or GPU), its blocking calls on worker threads.
- ``vllm``: vLLM's async engine on a GPU, adapters passed per request as ``LoRARequest``. vLLM is
  an optional extra (``pip install 'ragtune[vllm]'``, Linux with CUDA) imported only here.
- ``fake``: the test double ``FakeGenerator`` (no model; deterministic text at a set pace, held by a
  gate file) on the same worker threads and cancellation path as ``hf``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

from ragtune.config import RagtuneConfig
from ragtune.generation import Completion, SamplingParams, check_adapter


class _ThreadedBackend:
    """A blocking model (``Generator`` or ``FakeGenerator``) whose calls run on worker threads; a
    cancelled call sets the model's cancel event, so its generation stops at the next token."""

    def __init__(self, model):
        self.model = model

    async def load_adapter(self, slot: str, path) -> None:
        await asyncio.to_thread(self.model.load_adapter, slot, path)

    def unload_adapter(self, slot: str) -> None:
        self.model.unload_adapter(slot)

    async def complete(self, messages: list[dict[str, str]], params: SamplingParams, slot: str | None) -> Completion:
        """A cancelled call (timeout, client gone) stops its generation thread too."""
        cancel = threading.Event()
        try:
            return await asyncio.to_thread(self.model.complete, messages, params, slot, cancel)
        finally:
            cancel.set()

    async def stream(self, messages: list[dict[str, str]], params: SamplingParams,
                     slot: str | None) -> AsyncIterator[str | Completion]:
        cancel = threading.Event()
        pieces = self.model.stream(messages, params, slot, cancel)
        done = object()
        try:
            while (item := await asyncio.to_thread(next, pieces, done)) is not done:
                yield item
        finally:
            cancel.set()


class HfBackend(_ThreadedBackend):
    def __init__(self, cfg: RagtuneConfig):
        from ragtune.generation import Generator

        super().__init__(Generator(cfg.generator.model))


class FakeBackend(_ThreadedBackend):
    """``serve.backend=fake``: for tests of the HTTP plumbing (queues, timeouts, cancellation)."""

    def __init__(self, cfg: RagtuneConfig):
        from ragtune.generation import FakeGenerator

        super().__init__(FakeGenerator(cfg.serve.fake.token_interval_s, cfg.serve.fake.gate_file))


class VllmBackend:
    def __init__(self, cfg: RagtuneConfig):
        try:
            from vllm import AsyncEngineArgs
            from vllm.engine.async_llm_engine import AsyncLLMEngine
        except ImportError as exc:
            raise RuntimeError(f"serve.backend=vllm needs vLLM on the Generator's node ({exc}): install "
                               "'ragtune[vllm]' there (Linux with CUDA), or set serve.backend=hf") from None
        from ragtune.models import resolve

        self.base = resolve(cfg.generator.model)
        engine_args = {"model": str(self.base.path), "served_model_name": self.base.name,
                       "trust_remote_code": self.base.trust_remote_code, "enable_lora": True,
                       "max_loras": cfg.serve.max_loaded_adapters, **cfg.serve.engine_kwargs}
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args))
        self._ids = itertools.count(1)
        self._loras: dict[str, Any] = {}

    async def load_adapter(self, slot: str, path) -> None:
        from vllm.lora.request import LoRARequest

        path = check_adapter(path, self.base, slot.partition("#")[0])
        request = LoRARequest(lora_name=slot, lora_int_id=next(self._ids), lora_path=str(path))
        await self.engine.add_lora(request)
        self._loras[slot] = request

    def unload_adapter(self, slot: str) -> None:
        request = self._loras.pop(slot, None)
        if request is not None:
            try:
                asyncio.get_running_loop().create_task(self.engine.remove_lora(request.lora_int_id))
            except RuntimeError:  # no event loop: the replica is shutting down with its engine
                pass

    async def complete(self, messages: list[dict[str, str]], params: SamplingParams, slot: str | None) -> Completion:
        async for item in self.stream(messages, params, slot):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("vLLM ended the request without a result")

    async def stream(self, messages: list[dict[str, str]], params: SamplingParams,
                     slot: str | None) -> AsyncIterator[str | Completion]:
        """Closing this generator (client gone, timeout) aborts the request in the engine."""
        from vllm import SamplingParams as VllmSampling

        tokenizer = await self.engine.get_tokenizer()
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        sampling = VllmSampling(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                                stop=params.stop or None, seed=params.seed)
        lora = self._loras[slot] if slot else None
        sent, last = 0, None
        async for out in self.engine.generate(prompt, sampling, request_id=uuid.uuid4().hex, lora_request=lora):
            text = out.outputs[0].text
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)
            last = out
        if last is None:
            raise RuntimeError("vLLM ended the request without a result")
        choice = last.outputs[0]
        yield Completion(text=choice.text, prompt_tokens=len(last.prompt_token_ids),
                         completion_tokens=len(choice.token_ids),
                         finish_reason="length" if choice.finish_reason == "length" else "stop")


BACKENDS = {"hf": HfBackend, "vllm": VllmBackend, "fake": FakeBackend}


def make_backend(cfg: RagtuneConfig) -> HfBackend | VllmBackend | FakeBackend:
    return BACKENDS[cfg.serve.backend](cfg)
