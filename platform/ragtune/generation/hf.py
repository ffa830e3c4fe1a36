"""``generator.backend=hf``: transformers on CPU or GPU, PEFT adapters loaded beside one copy of the
base model and picked per call. Calls are serialized (the active adapter is model-wide state);
a batch of conversations is decoded together, left-padded."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ragtune.generation.base import (
    AdapterError, Completion, Messages, SamplingParams, StopText, ThreadedBackend, check_adapter, pieces_of,
)


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

    def _check(self, adapter: str | None) -> None:
        if adapter is not None and adapter not in self.adapters:
            raise AdapterError(f"adapter {adapter!r} is not loaded")

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        self._check(adapter)
        if adapter is not None:
            self.model.set_adapter(adapter)
            yield
        elif self.adapters:
            with self.model.disable_adapter():
                yield
        else:
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

    def stream(self, messages: Messages, params: SamplingParams, adapter: str | None,
               cancel: threading.Event) -> Iterator[str | Completion]:
        """The reply as text pieces, then its ``Completion``; setting ``cancel`` stops the
        generation after the current token."""
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        self._check(adapter)
        enc = self._encode([messages])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        result: dict = {}

        def run() -> None:
            try:
                with self._lock, self._active(adapter), torch.no_grad():
                    result["out"] = self.model.generate(**enc, streamer=streamer,
                                                        stopping_criteria=StoppingCriteriaList([Cancelled()]),
                                                        **self._sampling(params))
            except BaseException as exc:  # surfaced on the caller's thread
                result["error"] = exc
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        stop = StopText(params.stop)
        yield from pieces_of(stop, streamer)  # drains the streamer: generation ends at a stop string's last token
        thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, enc["input_ids"].shape[1]:]
        ended = stop.stopped or len(new) < params.max_tokens or int(new[-1]) == self.tokenizer.eos_token_id
        yield Completion(text=stop.text, prompt_tokens=int(enc["input_ids"].shape[1]), completion_tokens=int(len(new)),
                         finish_reason="stop" if ended else "length")

    def generate(self, conversations: list[Messages], params: SamplingParams, adapter: str | None) -> list[Completion]:
        """The reply to each conversation, all decoded together (left-padded)."""
        import torch

        self._check(adapter)
        enc = self._encode(conversations)
        with self._lock, self._active(adapter), torch.no_grad():
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


class Backend(ThreadedBackend):
    def __init__(self, cfg, slots: int):
        super().__init__(cfg, slots)
        self.model = TransformersModel(self._resolve_model(), self.tokenizer, cfg.hf.device)

    async def generate(self, conversations: list[Messages], params: SamplingParams,
                       slot: str | None = None) -> list[Completion]:
        """One left-padded batch of all ``conversations`` (the caller sizes it)."""
        return await asyncio.to_thread(self.model.generate, conversations, params, slot)
