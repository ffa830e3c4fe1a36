"""The HTTP front: an OpenAI-compatible FastAPI app on a Serve deployment that calls the
Retriever and Generator through their handles."""

import asyncio
import hmac
import json
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from ragtune.config import validate_config
from ragtune.core.modes import ADAPTER_MODES, RETRIEVAL_MODES
from ragtune.core.prompts import qa_messages
from ragtune.serve.api import (
    ApiError, ChatRequest, DocumentsRequest, RetrievalUnavailable, RetrieveRequest,
    chat_chunk, chat_response, citation, completion_id, usage,
)

app = FastAPI(title="ragtune", version="1")
_checks: list = []  # the replica's Ingress: one per process


@app.middleware("http")
async def _guard(request: Request, call_next):
    """Key and body size, checked before FastAPI reads the body."""
    try:
        for ingress in _checks:
            ingress._authorize(request)
            ingress._check_size(request)
    except ApiError as exc:
        return JSONResponse(exc.body(), status_code=exc.status)
    return await call_next(request)


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [(".".join(str(p) for p in e["loc"] if p != "body") or "body", e["msg"]) for e in exc.errors()]
    message = "; ".join(f"{field}: {msg}" for field, msg in problems)
    return JSONResponse(ApiError(422, message, "invalid_request", problems[0][0]).body(), status_code=422)


def _unwrap(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's RayTaskError wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32, max_queued_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, args: dict[str, Any], retriever, generator):
        from ragtune.models import resolve
        from ragtune.serve.adapters import AdapterRegistry

        self.cfg = validate_config(args, "the Serve application's args")
        self.retriever, self.generator = retriever, generator
        self.base = self.cfg.serve.model_name or self.cfg.generator.model
        self.base_names = {self.base, self.cfg.generator.model, resolve(self.cfg.generator.model).name}
        self.registry = AdapterRegistry(self.cfg.serve)
        env = self.cfg.serve.api_key_env
        self.api_key = os.environ.get(env) if env else None
        if env and not self.api_key:
            raise RuntimeError(f"serve.api_key_env names {env}, which is not set on this node: set it or unset serve.api_key_env")
        # Through the imported module: Serve ships this class by value, so a bare `_checks` here
        # would be a copy of the module's globals, not the list the middleware reads.
        from ragtune.serve import ingress as module

        module._checks.append(self)

    def _authorize(self, request: Request) -> None:
        if self.api_key is None or request.url.path == "/healthz":
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "invalid_api_key")

    def _check_size(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            raise ApiError(411, "send a Content-Length header", "length_required")
        if length is not None and int(length) > self.cfg.serve.max_body_bytes:
            raise ApiError(413, f"the request body has {length} bytes; the limit is serve.max_body_bytes="
                           f"{self.cfg.serve.max_body_bytes}", "request_too_large")

    async def _guarded(self, call):
        """Await a handle call; map overload, timeouts and the callee's errors to API errors."""
        from ragtune.generation import AdapterError
        from ragtune.serve.adapters import UnknownAdapter
        from ragtune.serve.deployments import InvalidFilter

        try:
            return await asyncio.wait_for(call, self.cfg.serve.request_timeout_s)
        except BackPressureError:
            raise ApiError(503, "the server is at capacity; retry shortly", "overloaded") from None
        except asyncio.TimeoutError:
            call.cancel()  # awaiting alone leaves the replica working on it (Serve cancels only on request)
            raise ApiError(504, f"no answer within serve.request_timeout_s={self.cfg.serve.request_timeout_s}",
                           "timeout") from None
        except Exception as exc:
            inner = _unwrap(exc)
            if isinstance(inner, RetrievalUnavailable):
                raise ApiError(503, f"retrieval is unavailable ({inner}); modes base and ft still answer",
                               "retrieval_unavailable") from None
            if isinstance(inner, RayActorError):  # a replica died mid-request (ours or one it called)
                raise ApiError(503, "a replica serving this request stopped; retry: Serve routes to a live one and "
                               "replaces the lost one", "replica_unavailable") from None
            if isinstance(inner, InvalidFilter):
                raise ApiError(422, str(inner), "invalid_filter", "ragtune.filter") from None
            if isinstance(inner, (UnknownAdapter, AdapterError)):
                raise ApiError(404, str(inner), "model_not_found", "model") from None
            raise

    def _model(self, model: str) -> tuple[str, str | None]:
        base, _, adapter = model.partition(":")
        if base not in self.base_names:
            raise ApiError(404, f"model {model!r} is not served here; use {self.base!r} or {self.base!r}:<adapter> "
                           "(GET /v1/models lists them)", "model_not_found", "model")
        return base, adapter or None

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        try:
            retrieval = await self._guarded(self.retriever.healthy.remote())
        except ApiError:
            retrieval = False
        return {"status": "ok", "retrieval": "ok" if retrieval else "unavailable"}

    @app.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        names = [self.base, *(f"{self.base}:{a}" for a in await asyncio.to_thread(self.registry.names))]
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "ragtune", "created": 0}
                                           for n in names]}

    @app.post("/v1/retrieve")
    async def retrieve(self, body: RetrieveRequest) -> dict[str, Any]:
        hits = await self._guarded(self.retriever.search.remote(
            body.query, body.top_k or self.cfg.serve.default_top_k, body.filter, body.search_mode))
        return {"object": "list", "data": [citation(i, h) for i, h in enumerate(hits, 1)]}

    @app.post("/v1/documents")
    async def upsert_documents(self, body: DocumentsRequest) -> dict[str, Any]:
        return await self._guarded(self.retriever.upsert.remote([d.model_dump() for d in body.documents]))

    @app.delete("/v1/documents/{doc_id:path}")
    async def delete_document(self, doc_id: str) -> dict[str, Any]:
        deleted = await self._guarded(self.retriever.delete.remote(doc_id))
        if not deleted:
            raise ApiError(404, f"no document {doc_id!r} in collection {self.cfg.milvus.collection}", "not_found", "doc_id")
        return {"doc_id": doc_id, "chunks_deleted": deleted}

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest):
        base, adapter = self._model(body.model)
        mode = body.ragtune.mode or ("hybrid" if adapter else "rag")
        if mode in ADAPTER_MODES and not adapter:
            raise ApiError(422, f"mode {mode} answers with an adapter: set model to {base}:<adapter>", "invalid_request",
                           "model")
        if mode not in ADAPTER_MODES and adapter:
            raise ApiError(422, f"mode {mode} answers with the base model: set model to {base}, or mode to "
                           f"{'hybrid' if mode == 'rag' else 'ft'}", "invalid_request", "ragtune.mode")
        max_tokens = body.max_completion_tokens or body.max_tokens or self.cfg.serve.default_max_tokens
        if max_tokens > self.cfg.serve.max_tokens_limit:
            raise ApiError(422, f"max_tokens {max_tokens} is over serve.max_tokens_limit="
                           f"{self.cfg.serve.max_tokens_limit}", "invalid_request", "max_tokens")
        question = body.messages[-1].content
        hits = []
        if mode in RETRIEVAL_MODES:
            hits = await self._guarded(self.retriever.search.remote(
                question, body.ragtune.top_k or self.cfg.serve.default_top_k, body.ragtune.filter,
                body.ragtune.search_mode))
        messages = self._messages(body, [h["text"] for h in hits] if mode in RETRIEVAL_MODES else None)
        params = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                  "stop": body.stops, "seed": body.seed}
        generator = self.generator.options(multiplexed_model_id=adapter or "")
        citations = [citation(i, h) for i, h in enumerate(hits, 1)]
        if not body.stream:
            done = await self._guarded(generator.complete.remote(messages, params))
            return chat_response(completion_id(), body.model, done["text"], done["finish_reason"],
                                 usage(done["prompt_tokens"], done["completion_tokens"]), citations, mode)
        return StreamingResponse(self._sse(generator, messages, params, body.model, citations, mode),
                                 media_type="text/event-stream")

    def _messages(self, body: ChatRequest, passages: list[str] | None) -> list[dict[str, str]]:
        """The configured (or the request's) system prompt, earlier turns, and the question with
        the documents block — built by the same function as the training prompts."""
        system = next((m.content for m in body.messages if m.role == "system"), None) or self.cfg.serve.system_prompt
        history = [{"role": m.role, "content": m.content} for m in body.messages[:-1] if m.role != "system"]
        first, *rest = qa_messages(body.messages[-1].content, passages, system)
        return [first, *history, *rest]

    async def _sse(self, generator, messages, params, model: str, citations, mode: str):
        cid = completion_id()

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        yield event(chat_chunk(cid, model, {"role": "assistant", "content": ""}))
        stream = generator.options(stream=True).stream.remote(messages, params)
        try:
            async for item in stream:
                if isinstance(item, str):
                    yield event(chat_chunk(cid, model, {"content": item}))
                else:
                    yield event(chat_chunk(cid, model, {}, item["finish_reason"],
                                           usage=usage(item["prompt_tokens"], item["completion_tokens"]),
                                           citations=citations, ragtune={"mode": mode}))
        except BackPressureError:
            yield event(ApiError(503, "the server is at capacity; retry shortly", "overloaded").body())
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop generating
            stream.cancel()
            raise
        yield "data: [DONE]\n\n"
