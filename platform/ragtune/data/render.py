"""Chat-template rendering with the loss on the answer tokens only, length policy and packing."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from ragtune.core.prompts import qa_messages
from ragtune.data.formats import DataError
from ragtune.models import ResolvedModel, resolve

IGNORE_INDEX = -100  # the label value transformers' loss skips


def load_chat_tokenizer(model: ResolvedModel):
    """The model's tokenizer; a model without a chat template is refused (training needs one)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.path, trust_remote_code=model.trust_remote_code)
    if not tokenizer.chat_template:
        raise DataError(f"model {model.name} has no chat template, so ragtune cannot render training rows the way "
                        "the model will be prompted; use an instruct/chat model (e.g. smollm2-135m-instruct) "
                        "or add a chat_template to its tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ChatRenderer:
    """Turns normalised rows into ``input_ids`` / ``labels``: prompt tokens are masked, and every
    assistant turn (the answer, with its end-of-turn token) carries the loss. It takes the model's
    reference, not a resolved path: as a Ray Data actor it resolves the model on its own node."""

    def __init__(self, model_ref: str, system_prompt: str | None, max_length: int, overflow: str):
        self.tokenizer = load_chat_tokenizer(resolve(model_ref))
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.overflow = overflow

    def messages(self, row: dict[str, Any]) -> list[dict[str, str]]:
        if row.get("chat"):
            return json.loads(row["chat"])
        passages = json.loads(row["passages"]) if row.get("passages") else None
        return qa_messages(row["question"], passages, self.system_prompt, answer=row["answer"])

    def _template(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def encode(self, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
        """Token ids and labels of a conversation; only assistant turns are learned."""
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._template(messages[:i], generation_prompt=True)
            full = self._template(messages[: i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise DataError("the model's chat template does not render conversations as growing prefixes, "
                                "so answer tokens cannot be located; use a model with a standard chat template")
            prompt_ids = self.tokenizer(prompt[len(done):], add_special_tokens=False)["input_ids"]
            answer_ids = self.tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
            ids += prompt_ids + answer_ids
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer_ids
            done = full
        return ids, labels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, list] = {"input_ids": [], "labels": [], "status": [], "n_tokens": [], "n_label_tokens": []}
        for row in _rows(batch):
            ids, labels = self.encode(self.messages(row))
            status = "ok"
            if len(ids) > self.max_length:
                if self.overflow == "drop":
                    status = "dropped_too_long"
                else:
                    ids, labels = ids[: self.max_length], labels[: self.max_length]
                    status = "truncated" if any(t != IGNORE_INDEX for t in labels) else "dropped_no_answer_left"
            out["input_ids"].append(np.asarray(ids, dtype=np.int32))
            out["labels"].append(np.asarray(labels, dtype=np.int32))
            out["status"].append(status)
            out["n_tokens"].append(len(ids))
            out["n_label_tokens"].append(sum(t != IGNORE_INDEX for t in labels))
        return {**{k: batch[k] for k in ("id", "split", "order_key")}, **{k: np.asarray(v) if k not in ("input_ids", "labels")
                                                            else _object_array(v) for k, v in out.items()}}


def _rows(batch: dict[str, np.ndarray]):
    keys = list(batch)
    for i in range(len(batch[keys[0]])):
        yield {k: batch[k][i] for k in keys}


def _object_array(items: list) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def pack(batch: dict[str, np.ndarray], max_length: int) -> dict[str, np.ndarray]:
    """Greedy packing of consecutive sequences into rows of at most ``max_length`` tokens;
    ``position_ids`` restart at each packed example."""
    rows: list[tuple[list, list, list]] = []
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        if not rows or len(rows[-1][0]) + len(ids) > max_length:
            rows.append(([], [], []))
        rows[-1][0].extend(ids)
        rows[-1][1].extend(labels)
        rows[-1][2].extend(range(len(ids)))
    return {
        "input_ids": _object_array([np.asarray(r[0], dtype=np.int32) for r in rows]),
        "labels": _object_array([np.asarray(r[1], dtype=np.int32) for r in rows]),
        "position_ids": _object_array([np.asarray(r[2], dtype=np.int32) for r in rows]),
    }
