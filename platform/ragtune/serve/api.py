"""The HTTP API's request and response bodies: the OpenAI chat schema plus ragtune's extension
(``ragtune``: mode, top_k, filter) and citations. Pure pydantic, no Ray."""

from __future__ import annotations

import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from ragtune.core.documents import id_too_long
from ragtune.core.filters import FilterError, to_milvus
from ragtune.core.modes import Mode, SearchMode



class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Access:
    """Who may do what: the read key, the admin key, and whether this machine's own clients may
    write documents when there is no admin key."""

    api_key: str | None
    admin_key: str | None
    local_documents: bool = False


LOOPBACK_ADDRESSES = frozenset({"127.0.0.1", "::1"})


def _same(key: bytes | None, expected: str | None) -> bool:
    return key is not None and expected is not None and hmac.compare_digest(key, expected.encode())


def authorize(method: str, path: str, authorization: str, client: str, access: Access) -> None:
    """Raise the ApiError a request gets, if any. Reads take the API key (or the admin key); POST
    and DELETE /v1/documents take the admin key, or with none configured and
    ``access.local_documents``, come from a loopback address. ``path`` is the application's."""
    if path == "/healthz":
        return
    scheme, _, sent = authorization.partition(" ")
    key = sent.strip().encode() if scheme.lower() == "bearer" and sent.strip() else None
    if _same(key, access.admin_key):
        return
    if method in ("POST", "DELETE") and path.startswith("/v1/documents"):
        if access.admin_key is not None:
            if _same(key, access.api_key):
                raise ApiError(403, "this key may read, not write: POST and DELETE /v1/documents take the admin "
                               "key (serve.admin_key_env)", "permission_denied")
            raise ApiError(401, "missing or wrong admin key: send 'Authorization: Bearer <admin key>'",
                           "invalid_api_key")
        if not (access.local_documents and client in LOOPBACK_ADDRESSES):
            raise ApiError(403, "the documents API is off: set serve.admin_key_env to a variable holding an admin "
                           "key (or, for a server used from this machine only, serve.local_documents_api=true)",
                           "documents_api_off")
    if access.api_key is not None and not _same(key, access.api_key):
        raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")


def check_host(host: str, allowed: list[str]) -> None:
    """A server with ``allowed`` Host names answers only those (any port): a web page whose DNS
    name was rebound to 127.0.0.1 sends its own name."""
    if not allowed:
        return
    name = host[1:host.find("]")] if host.startswith("[") else host.rpartition(":")[0] if ":" in host else host
    if name.lower() not in {a.lower() for a in allowed}:
        raise ApiError(400, f"Host {host!r} is not served here; serve.allowed_hosts: {sorted(allowed)}",
                       "invalid_host")


class RetrievalUnavailable(RuntimeError):
    """Milvus cannot be reached; modes without retrieval keep working."""


# OpenAI's own limits where it has them (4 stop sequences), generous ones elsewhere
MAX_MESSAGES = 256
MAX_STOPS = 4
MAX_STOP_CHARS = 256
_Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]


def _valid_filter(text: str) -> str:
    try:
        to_milvus(text)
    except FilterError as exc:
        raise ValueError(str(exc)) from None
    return text


# A search filter in ragtune's grammar (core/filters.py); the server translates it to Milvus
Filter = Annotated[str, Field(max_length=4096, description='e.g. doc_id like "policies/%" and metadata.year >= 2024'),
                   AfterValidator(_valid_filter)]


class ContentPart(BaseModel):
    """One part of a message's ``content`` list, as OpenAI's clients send it."""

    model_config = ConfigDict(extra="ignore")
    type: str = Field(max_length=64)
    text: str = ""


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: str | list[ContentPart]

    @field_validator("content")
    @classmethod
    def _text(cls, content: str | list[ContentPart]) -> str:
        """A list of text parts is their text, joined by newlines; other parts (images, audio, files)
        are refused: the models served here read text."""
        if isinstance(content, str):
            return content
        other = next((part.type for part in content if part.type != "text"), None)
        if other is not None:
            raise ValueError(f"content parts of type {other!r} are not supported: the served models read text; "
                             "send a string or parts of type 'text'")
        return "\n".join(part.text for part in content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


def _refuse(parameter: str, why: str) -> ValueError:
    return ValueError(f"{parameter} is not supported here: {why}")


class RagtuneOptions(BaseModel):
    """The extension object (``extra_body={"ragtune": {...}}`` with the openai client)."""

    model_config = ConfigDict(extra="forbid")
    mode: Mode | None = Field(None, description="unset: hybrid with an adapter in `model`, else rag.")
    top_k: int | None = Field(None, ge=1, le=100)
    filter: Filter = ""
    search_mode: SearchMode | None = Field(None, description="unset: the server's search.mode.")


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI fields that change nothing here (user, store, ...) are accepted
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    stop: _Stop | Annotated[list[_Stop], Field(max_length=MAX_STOPS)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**63)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ragtune: RagtuneOptions = RagtuneOptions()
    # OpenAI parameters this server cannot honour: refused, naming the parameter, never ignored
    n: int = 1
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: int | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, n: int) -> int:
        if n != 1:
            raise _refuse(f"n={n}", "one choice per request; send n=1 (several requests for several answers)")
        return n

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, tools: list[Any] | None) -> None:
        if tools:
            raise _refuse("tool calling", "the answer is text from the model and the retrieved passages; leave out "
                                          "tools and functions")
        return None

    @field_validator("response_format")
    @classmethod
    def _text_only(cls, response_format: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (response_format or {}).get("type", "text")
        if kind != "text":
            raise _refuse(f"response_format {kind!r}", "answers are plain text; leave it out or send "
                                                       "{'type': 'text'}")
        return response_format

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, wanted: bool | int | None) -> bool | int | None:
        if wanted:
            raise _refuse("logprobs", "the generation backends return text, not token probabilities; leave out "
                                      "logprobs and top_logprobs")
        return wanted

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
    filter: Filter = ""
    search_mode: SearchMode | None = Field(None, description="unset: the server's search.mode.")


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit per request


class EmbeddingsRequest(BaseModel):
    """``POST /v1/embeddings``: texts embedded by the collection's encoder, as the Retriever embeds queries."""

    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=256)
    input: Annotated[str, Field(min_length=1, max_length=100_000)] | Annotated[
        list[Annotated[str, Field(min_length=1, max_length=100_000)]], Field(min_length=1, max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


def embeddings_response(model: str, vectors: list[list[float]], tokens: int, encoding: str) -> dict[str, Any]:
    """OpenAI's embeddings list; base64 is the little-endian float32 bytes (what the openai client asks for)."""
    import base64

    import numpy as np

    def encoded(vector: list[float]) -> list[float] | str:
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode() if encoding == "base64" else vector

    return {"object": "list", "model": model,
            "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class DocumentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    doc_id: str = Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")
    text: str = Field(min_length=1)
    title: str = Field("", max_length=2048)
    source: str = Field("", max_length=4096, description="unset: api:<doc_id>.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("doc_id")
    @classmethod
    def _storable_id(cls, doc_id: str) -> str:
        if problem := id_too_long(doc_id):
            raise ValueError(problem)
        return doc_id


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
