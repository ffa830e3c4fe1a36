"""Chat generation with LoRA adapters — shared by evaluation and serving.

One base model per process; adapters are loaded next to it by name and picked per call, so a
server A/B-tests several fine-tunes on one copy of the base weights.
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ragtune.models import ResolvedModel, resolve
from ragtune.runtime import is_storage_uri


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


class Generator:
    """A causal LM with its chat template, and the LoRA adapters loaded onto it.

    Calls are serialized per instance: the active adapter is model-wide state.
    """

    def __init__(self, model_ref: str, adapter: str | Path | None = None, device: str = "auto"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ragtune.embedding import pick_device

        self.model_info = resolve(model_ref)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_info.path, padding_side="left")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(
            self.model_info.path, dtype=dtype, trust_remote_code=self.model_info.trust_remote_code).to(self.device).eval()
        self.adapters: set[str] = set()
        self._lock = threading.Lock()
        self._default_adapter: str | None = None
        if adapter is not None:
            self.load_adapter("default", adapter)
            self._default_adapter = "default"

    # -- adapters ----------------------------------------------------------------------------

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Load the PEFT adapter in ``path`` under ``name``.

        Raises:
            AdapterError: no adapter there, or it was trained for another base model.
        """
        from peft import PeftModel

        path = check_adapter(path, self.model_info, name)
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

    @contextmanager
    def _active(self, adapter: str | None) -> Iterator[None]:
        if adapter is not None:
            if adapter not in self.adapters:
                raise AdapterError(f"adapter {adapter!r} is not loaded")
            self.model.set_adapter(adapter)
            yield
        elif self.adapters:
            with self.model.disable_adapter():
                yield
        else:
            yield

    # -- generation --------------------------------------------------------------------------

    def prompt_ids(self, messages: list[dict[str, str]]):
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(self.device)

    def _generate_kwargs(self, params: SamplingParams) -> dict:
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

    def stream(self, messages: list[dict[str, str]], params: SamplingParams, adapter: str | None = None,
               cancel: threading.Event | None = None) -> Iterator[str | Completion]:
        """Yield the reply as text pieces while it is generated, then its ``Completion``. Setting
        ``cancel`` stops the generation after the current token (the caller went away).

        Raises:
            AdapterError: ``adapter`` is not loaded.
        """
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        adapter = adapter or self._default_adapter
        ids = self.prompt_ids(messages)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stopping = StoppingCriteriaList([Cancelled()] if cancel is not None else [])
        result: dict = {}

        def run() -> None:
            try:
                with self._lock, self._active(adapter), torch.no_grad():
                    result["out"] = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                                        streamer=streamer, stopping_criteria=stopping,
                                                        **self._generate_kwargs(params))
            except BaseException as exc:  # surfaced on the caller's thread
                result["error"] = exc
                streamer.end()

        if adapter is not None and adapter not in self.adapters:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        # Text is held back by the longest stop string minus one character, so that a stop string
        # split across pieces is never partly sent (OpenAI leaves it out of the reply).
        hold = max((len(stop) for stop in params.stop), default=1) - 1
        text, sent, stopped = "", 0, False
        for piece in streamer:
            if stopped:
                continue  # drain: generation ends at the stop string's last token
            text += piece
            cuts = [i for stop in params.stop if (i := text.find(stop)) != -1]
            if cuts:
                text, stopped = text[:min(cuts)], True
            ready = len(text) if stopped else len(text) - hold
            if ready > sent:
                yield text[sent:ready]
                sent = ready
        if len(text) > sent:
            yield text[sent:]
        thread.join()
        if "error" in result:
            raise result["error"]
        new = result["out"][0, ids.shape[1]:]
        ended = stopped or (len(new) < params.max_tokens) or int(new[-1]) == self.tokenizer.eos_token_id
        yield Completion(text=text, prompt_tokens=int(ids.shape[1]), completion_tokens=int(len(new)),
                         finish_reason="stop" if ended else "length")

    def complete(self, messages: list[dict[str, str]], params: SamplingParams, adapter: str | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        """The whole reply (see ``stream``)."""
        *_, completion = self.stream(messages, params, adapter, cancel)
        return completion

    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 32,
                 batch_size: int = 16, adapter: str | None = None) -> list[Completion]:
        """The greedy reply to each conversation, batched with left padding (evaluation), from the
        loaded adapter ``adapter`` (default: the constructor's, else the base model).

        Raises:
            AdapterError: ``adapter`` is not loaded.
        """
        import torch

        adapter = adapter or self._default_adapter

        replies: list[Completion] = []
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for start in range(0, len(conversations), batch_size):
            prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                       for c in conversations[start:start + batch_size]]
            enc = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
            with self._lock, self._active(adapter), torch.no_grad():
                out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad)
            for mask, new in zip(enc["attention_mask"], out[:, enc["input_ids"].shape[1]:]):
                ended = (new == eos).nonzero()
                length = int(ended[0, 0]) + 1 if len(ended) else len(new)  # up to and with the end of turn
                text = self.tokenizer.decode(new[:length], skip_special_tokens=True).strip()
                replies.append(Completion(text=text, prompt_tokens=int(mask.sum()), completion_tokens=length,
                                          finish_reason="stop" if len(ended) else "length"))
        return replies


class FakeGenerator:
    """A test double with the blocking interface of ``Generator`` and no model (``serve.backend=fake``).

    The reply is the last message's words, cycled up to ``max_tokens`` (after ``[<adapter>]`` when an
    adapter answers), one word per ``token_interval_s``; while ``gate_file`` is set and does not
    exist, an answer waits before its first word. Calls are serialized like ``Generator``'s, so an
    answer that is not cancelled keeps the next one waiting — what tests of timeouts and hang-ups
    check without depending on the machine's speed.
    """

    _POLL_S = 0.02

    def __init__(self, token_interval_s: float = 0.0, gate_file: str | Path | None = None):
        self.token_interval_s = token_interval_s
        self.gate_file = Path(gate_file) if gate_file else None
        self.adapters: dict[str, str] = {}
        self._lock = threading.Lock()

    def load_adapter(self, name: str, path: str | Path) -> None:
        """Raises: AdapterError: ``path`` holds no adapter."""
        self.adapters[name] = check_adapter(path, None, name).name

    def unload_adapter(self, name: str) -> None:
        self.adapters.pop(name, None)

    def stream(self, messages: list[dict[str, str]], params: SamplingParams, adapter: str | None = None,
               cancel: threading.Event | None = None) -> Iterator[str | Completion]:
        """Like ``Generator.stream``: the words come from a thread of their own, which stops at the
        next word once ``cancel`` is set. Raises: AdapterError: ``adapter`` is not loaded."""
        if adapter is not None and adapter not in self.adapters:
            raise AdapterError(f"adapter {adapter!r} is not loaded")
        cancel = cancel or threading.Event()
        words = messages[-1]["content"].split() or ["…"]
        if adapter is not None:
            words = [f"[{self.adapters[adapter]}]", *words]
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
        yield Completion(text="".join(sent), prompt_tokens=sum(len(m["content"].split()) for m in messages),
                         completion_tokens=len(sent), finish_reason="length" if len(sent) == params.max_tokens else "stop")

    def complete(self, messages: list[dict[str, str]], params: SamplingParams, adapter: str | None = None,
                 cancel: threading.Event | None = None) -> Completion:
        *_, completion = self.stream(messages, params, adapter, cancel)
        return completion
