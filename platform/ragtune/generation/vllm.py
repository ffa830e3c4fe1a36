"""``generator.backend=vllm``: vLLM's async engine on a GPU (continuous batching), adapters passed per
request as ``LoRARequest``. vLLM is an optional extra (``pip install 'ragtune[vllm]'``, Linux with
CUDA) imported only here; comparison on this backend runs through Ray Data LLM (``eval/compare.py``)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from ragtune.generation.base import AdapterError, Completion, GenerationBackend, Messages, SamplingParams, check_adapter


def engine_args(cfg, model_info, slots: int) -> dict[str, Any]:
    """vLLM engine arguments: ragtune's (model, adapters) and ``generator.vllm.engine_kwargs``."""
    return {"model": str(model_info.path), "served_model_name": model_info.name,
            "trust_remote_code": model_info.trust_remote_code, "enable_lora": True,
            "max_loras": slots, **cfg.vllm.engine_kwargs}


class Backend(GenerationBackend):
    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        try:
            from vllm import AsyncEngineArgs
            from vllm.engine.async_llm_engine import AsyncLLMEngine
        except ImportError as exc:
            raise RuntimeError(f"generator.backend=vllm needs vLLM on this node ({exc}): install 'ragtune[vllm]' "
                               "there (Linux with CUDA), or set generator.backend=hf") from None
        self.base = self._resolve_model()
        self.engine = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**engine_args(cfg, self.base, slots)))
        self._ids = itertools.count(1)
        self._loras: dict[str, Any] = {}

    async def load_adapter(self, slot: str, path: str | Path) -> None:
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

    async def stream(self, messages: Messages, params: SamplingParams,
                     slot: str | None = None) -> AsyncIterator[str | Completion]:
        """Closing this generator (client gone, timeout) aborts the request in the engine."""
        from vllm import SamplingParams as VllmSampling

        if slot is not None and slot not in self._loras:
            raise AdapterError(f"adapter {slot!r} is not loaded")
        tokenizer = await self.engine.get_tokenizer()
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        sampling = VllmSampling(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                                stop=params.stop or None, seed=params.seed)
        sent, last = 0, None
        async for out in self.engine.generate(prompt, sampling, request_id=uuid.uuid4().hex,
                                              lora_request=self._loras.get(slot) if slot else None):
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
