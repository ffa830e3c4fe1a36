"""The HTTP API's request and response bodies: the OpenAI chat schema plus ragtune's extension
(``ragtune``: mode, top_k, filter) and citations. Pure pydantic, no Ray."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ragtune.core.modes import Mode, SearchMode



class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


class RetrievalUnavailable(RuntimeError):
    """Milvus cannot be reached; modes without retrieval keep working."""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: str


class RagtuneOptions(BaseModel):
    """The extension object (``extra_body={"ragtune": {...}}`` with the openai client)."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode | None = Field(None, description="unset: hybrid with an adapter in `model`, else rag.")
    top_k: int | None = Field(None, ge=1, le=100)
    filter: str = Field("", max_length=4096, description="A Milvus boolean expression, e.g. doc_id like \"policies/%\".")
    search_mode: SearchMode | None = Field(None, description="unset: the server's search.mode.")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields ragtune does not use (n=1, user, ...) are accepted
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    ragtune: RagtuneOptions = RagtuneOptions()

    @field_validator("messages")
    @classmethod
    def _ends_with_user(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if messages[-1].role != "user":
            raise ValueError("the last message must have role 'user' (the question to answer)")
        return messages

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class RetrieveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=8192)
    top_k: int | None = Field(None, ge=1, le=100)
    filter: str = Field("", max_length=4096)
    search_mode: SearchMode | None = Field(None, description="unset: the server's search.mode.")


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_id: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")
    text: str = Field(min_length=1)
    title: str = Field("", max_length=2048)
    source: str = Field("", max_length=4096, description="unset: api:<doc_id>.")
    metadata: dict[str, Any] = Field(default_factory=dict)


class DocumentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    documents: list[DocumentIn] = Field(min_length=1, max_length=1000)


def citation(index: int, hit: dict[str, Any]) -> dict[str, Any]:
    """What a response says about one retrieved passage (``index`` is its number in the prompt)."""
    return {"index": index, "doc_id": hit["doc_id"], "chunk_index": hit["chunk_index"], "score": round(hit["score"], 6),
            "source": hit["source"], "title": hit["title"], "text": hit["text"]}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def chat_response(cid: str, model: str, text: str, finish_reason: str, usage: dict[str, int],
                  citations: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}],
            "usage": usage, "citations": citations, "ragtune": {"mode": mode}}


def chat_chunk(cid: str, model: str, delta: dict[str, Any], finish_reason: str | None = None,
               **extra: Any) -> dict[str, Any]:
    return {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
