"""The HTTP front: an OpenAI-compatible FastAPI app on a Serve deployment that calls the
Retriever and Generator through their handles."""

import asyncio
import json
import os
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException

from ragtune.config import validate_config
from ragtune.core.filters import to_milvus
from ragtune.core.modes import ADAPTER_MODES, RETRIEVAL_MODES
from ragtune.core.prompts import qa_messages
from ragtune.serve.metrics import CONTENT_TYPE, ServingMetrics
from ragtune.serve.api import (
    Access, ApiError, ChatRequest, DocumentsRequest, EmbeddingsRequest, RetrievalUnavailable, RetrieveRequest,
    authorize, chat_chunk, chat_response, check_host, citation, completion_id, embeddings_response, usage,
)

app = FastAPI(title="ragtune", version="1")
_checks: list = []  # the replica's Ingress: one per process


_ROUTES = {"/v1/chat/completions": "chat", "/v1/retrieve": "retrieve", "/v1/embeddings": "embeddings",
           "/v1/models": "models", "/healthz": "healthz", "/metrics": "metrics"}


@app.middleware("http")
async def _guard(request: Request, call_next):
    """Host, key and body size, checked before FastAPI reads the body; every request counted and
    timed in the replica's metrics (a stream's time is to its first byte)."""
    started = time.perf_counter()
    path = request.url.path.removeprefix(request.scope.get("root_path", "")) or "/"
    route = "documents" if path.startswith("/v1/documents") else _ROUTES.get(path, "other")
    metrics = _checks[0].metrics if _checks else None
    if metrics:
        metrics.in_flight.inc()
    try:
        for ingress in _checks:
            ingress._check_host(request)
            ingress._authorize(request)
            ingress._check_size(request)
        response = await call_next(request)
    except ApiError as exc:
        response = JSONResponse(exc.body(), status_code=exc.status)
    finally:
        if metrics:
            metrics.in_flight.dec()
    if metrics:
        labels = getattr(request.state, "labels", {})
        # a refused request names no model: a client inventing adapter names must not invent label values
        model = labels.get("model", "") if response.status_code < 400 else ""
        metrics.answered(route, labels.get("mode", ""), model, response.status_code, time.perf_counter() - started)
    return response


@app.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@app.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (an unknown route 404, a wrong method 405) in OpenAI's shape too."""
    codes = {404: "not_found", 405: "method_not_allowed"}
    message = {404: f"no route {request.url.path}; the API is under /v1 (GET /v1/models lists the models)",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(ApiError(exc.status_code, message, codes.get(exc.status_code, "http_error")).body(),
                        status_code=exc.status_code, headers=exc.headers)


@app.exception_handler(RequestValidationError)
async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [(".".join(str(p) for p in e["loc"] if p != "body") or "body", e["msg"].removeprefix("Value error, "))
                for e in exc.errors()]
    message = "; ".join(f"{field}: {msg}" for field, msg in problems)
    return JSONResponse(ApiError(400, message, "invalid_request", problems[0][0]).body(), status_code=400)


def _key(env: str | None, setting: str) -> str | None:
    """The key in the environment variable ``env`` names; a named variable must be set."""
    key = os.environ.get(env) if env else None
    if env and not key:
        raise RuntimeError(f"{setting} names {env}, which is not set on this node: set it or unset {setting}")
    return key


def _unwrap(exc: BaseException) -> BaseException:
    """The user's exception inside Ray's RayTaskError wrapper."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=32, max_queued_requests=64)
@serve.ingress(app)
class Ingress:
    def __init__(self, args: dict[str, Any], retriever, generator):
        from ragtune.data.render import load_chat_tokenizer
        from ragtune.models import context_length, resolve
        from ragtune.serve.adapters import AdapterRegistry

        self.cfg = validate_config(args, "the Serve application's args")
        self.retriever, self.generator = retriever, generator
        model = resolve(self.cfg.generator.model)
        self.base = self.cfg.serve.model_name or self.cfg.generator.model
        self.base_names = {self.base, self.cfg.generator.model, model.name}
        self.tokenizer, self.context_tokens = load_chat_tokenizer(model), context_length(model)
        self.registry = AdapterRegistry(self.cfg.serve)
        self.started = int(time.time())  # the models' `created`
        self.metrics = ServingMetrics()
        self.access = Access(api_key=_key(self.cfg.serve.api_key_env, "serve.api_key_env"),
                             admin_key=_key(self.cfg.serve.admin_key_env, "serve.admin_key_env"),
                             local_documents=self.cfg.serve.local_documents_api)
        # Through the imported module: Serve ships this class by value, so a bare `_checks` here
        # would be a copy of the module's globals, not the list the middleware reads.
        from ragtune.serve import ingress as module

        module._checks.append(self)

    def _check_host(self, request: Request) -> None:
        check_host(request.headers.get("host", ""), self.cfg.serve.allowed_hosts)

    def _authorize(self, request: Request) -> None:
        authorize(request.method, request.url.path.removeprefix(request.scope.get("root_path", "")) or "/",
                  request.headers.get("authorization", ""), request.client.host if request.client else "", self.access)

    def _check_size(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            raise ApiError(411, "send a Content-Length header", "length_required")
        if length is not None and int(length) > self.cfg.serve.max_body_bytes:
            raise ApiError(413, f"the request body has {length} bytes; the limit is serve.max_body_bytes="
                           f"{self.cfg.serve.max_body_bytes}", "request_too_large")

    async def _guarded(self, call, cancel=None, timeout_s: float | None = None):
        """Await a handle call (``cancel`` stops it: by default its own ``cancel``); map overload,
        timeouts and the callee's errors to API errors."""
        from ragtune.generation import AdapterError
        from ragtune.serve.adapters import UnknownAdapter
        from ragtune.serve.deployments import InvalidFilter

        try:
            return await asyncio.wait_for(call, timeout_s or self.cfg.serve.request_timeout_s)
        except BackPressureError:
            self.metrics.overloaded.inc()
            raise ApiError(503, "the server is at capacity; retry shortly", "overloaded") from None
        except asyncio.TimeoutError:
            (cancel or call.cancel)()  # awaiting alone leaves the replica working (Serve cancels only on request)
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
                raise ApiError(400, str(inner), "invalid_filter", "ragtune.filter") from None
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
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "ragtune", "created": self.started}
                                           for n in names]}

    @app.post("/v1/embeddings")
    async def embeddings(self, body: EmbeddingsRequest) -> dict[str, Any]:
        """The collection's encoder on ``input``: the vectors the Retriever searches with."""
        encoder = await self._guarded(self.retriever.encoder.remote())
        if body.model not in (encoder["model"], self.cfg.embedding.model):
            raise ApiError(404, f"embedding model {body.model!r} is not served here; this server embeds with "
                           f"{encoder['model']!r} (the collection's encoder)", "model_not_found", "model")
        if body.dimensions not in (None, encoder["dim"]):
            raise ApiError(400, f"dimensions={body.dimensions}: {encoder['model']} gives {encoder['dim']}-dimensional "
                           "vectors; leave dimensions out", "invalid_request", "dimensions")
        done = await self._guarded(self.retriever.embed.remote(body.texts))
        return embeddings_response(body.model, done["vectors"], done["tokens"], body.encoding_format)

    @app.get("/metrics")
    async def metrics_text(self) -> Response:
        """ragtune's serving metrics in Prometheus' text format (README: Serving, "Metrics")."""
        return Response(self.metrics.text(), media_type=CONTENT_TYPE)

    async def _search(self, query: str, top_k: int | None, filter: str, mode: str | None) -> list[dict[str, Any]]:
        found = await self._guarded(self.retriever.search.remote(query, top_k or self.cfg.serve.default_top_k,
                                                                 to_milvus(filter), mode))
        self.metrics.retrieved(found)
        return found["hits"]

    @app.post("/v1/retrieve")
    async def retrieve(self, body: RetrieveRequest) -> dict[str, Any]:
        hits = await self._search(body.query, body.top_k, body.filter, body.search_mode)
        return {"object": "list", "data": [citation(i, h) for i, h in enumerate(hits, 1)]}

    @app.post("/v1/documents")
    async def upsert_documents(self, body: DocumentsRequest) -> dict[str, Any]:
        result = await self._guarded(self.retriever.upsert.remote([d.model_dump() for d in body.documents]))
        if problems := result.get("rejected"):
            reasons = "; ".join(f"documents[{i}] ({doc_id!r}): {why}" for i, doc_id, why in problems)
            raise ApiError(422, f"nothing was written: {reasons}", "unindexable_document", f"documents[{problems[0][0]}]")
        return result

    @app.delete("/v1/documents/{doc_id:path}")
    async def delete_document(self, doc_id: str) -> dict[str, Any]:
        deleted = await self._guarded(self.retriever.delete.remote(doc_id))
        if not deleted:
            raise ApiError(404, f"no document {doc_id!r} in collection {self.cfg.milvus.collection}", "not_found", "doc_id")
        return {"doc_id": doc_id, "chunks_deleted": deleted}

    @app.post("/v1/chat/completions")
    async def chat(self, body: ChatRequest, request: Request):
        started = time.perf_counter()
        base, adapter = self._model(body.model)
        mode = body.ragtune.mode or ("hybrid" if adapter else "rag")
        model = f"{self.base}:{adapter}" if adapter else self.base
        request.state.labels = {"mode": mode, "model": model}
        if mode in ADAPTER_MODES and not adapter:
            raise ApiError(400, f"mode {mode} answers with an adapter: set model to {base}:<adapter>", "invalid_request",
                           "model")
        if mode not in ADAPTER_MODES and adapter:
            raise ApiError(400, f"mode {mode} answers with the base model: set model to {base}, or mode to "
                           f"{'hybrid' if mode == 'rag' else 'ft'}", "invalid_request", "ragtune.mode")
        max_tokens = body.max_completion_tokens or body.max_tokens or self.cfg.serve.default_max_tokens
        if max_tokens > self.cfg.serve.max_tokens_limit:
            raise ApiError(400, f"max_tokens {max_tokens} is over serve.max_tokens_limit="
                           f"{self.cfg.serve.max_tokens_limit}", "invalid_request", "max_tokens")
        question = body.messages[-1].content
        await self._check_context(self._messages(body, None), max_tokens)  # before any retrieval
        hits = []
        if mode in RETRIEVAL_MODES:
            hits = await self._search(question, body.ragtune.top_k, body.ragtune.filter, body.ragtune.search_mode)
        messages = self._messages(body, [h["text"] for h in hits] if mode in RETRIEVAL_MODES else None)
        if hits:
            await self._check_context(messages, max_tokens)
        params = {"max_tokens": max_tokens, "temperature": body.temperature, "top_p": body.top_p,
                  "stop": body.stops, "seed": body.seed}
        generator = self.generator.options(multiplexed_model_id=adapter or "")
        citations = [citation(i, h) for i, h in enumerate(hits, 1)]
        if not body.stream:
            asked = time.perf_counter()
            done = await self._guarded(generator.complete.remote(messages, params))
            self.metrics.generated(mode, model, done, time.perf_counter() - asked)
            return chat_response(completion_id(), body.model, done["text"], done["finish_reason"],
                                 usage(done["prompt_tokens"], done["completion_tokens"]), citations, mode)
        # the first item before the first byte: an unknown adapter is a 404, an overload a 503
        deadline = time.monotonic() + self.cfg.serve.request_timeout_s
        stream = generator.options(stream=True).stream.remote(messages, params)
        first = await self._guarded(anext(stream, None), cancel=stream.cancel)
        self.metrics.first_token_seconds.labels(mode).observe(time.perf_counter() - started)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(self._sse(stream, first, deadline, body.model, citations, (mode, model), include_usage),
                                 media_type="text/event-stream")

    async def _check_context(self, messages: list[dict[str, str]], max_tokens: int) -> None:
        """400 ``context_length_exceeded`` unless the prompt, as the generator will tokenize it, and
        ``max_tokens`` fit the model's context (counted in a thread: a long prompt takes ~0.1 s)."""
        def count() -> int:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

        prompt_tokens = await asyncio.to_thread(count)
        if prompt_tokens + max_tokens > self.context_tokens:
            raise ApiError(400, f"this model's context is {self.context_tokens} tokens; the request needs "
                           f"{prompt_tokens + max_tokens} ({prompt_tokens} in the messages with any retrieved "
                           f"passages, {max_tokens} for the completion): shorten the messages or lower max_tokens",
                           "context_length_exceeded", "messages")

    def _messages(self, body: ChatRequest, passages: list[str] | None) -> list[dict[str, str]]:
        """The configured (or the request's) system prompt, earlier turns, and the question with
        the documents block — built by the same function as the training prompts."""
        instructions = ("system", "developer")
        system = next((m.content for m in body.messages if m.role in instructions), None) or self.cfg.serve.system_prompt
        history = [{"role": m.role, "content": m.content} for m in body.messages[:-1] if m.role not in instructions]
        first, *rest = qa_messages(body.messages[-1].content, passages, system)
        return [first, *history, *rest]

    async def _sse(self, stream, first, deadline: float, model: str, citations, labels: tuple[str, str],
                   include_usage: bool):
        """Server-sent events of an answer whose first item has arrived; the rest within the request
        timeout. An error after the first byte is sent as an event in OpenAI's error shape. The last
        chunk carries the usage (and the citations); with ``stream_options.include_usage`` a chunk
        with no choices and the usage follows it, as OpenAI sends one."""
        cid, (mode, served) = completion_id(), labels

        def event(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        yield event(chat_chunk(cid, model, {"role": "assistant", "content": ""}))
        item = first
        try:
            while item is not None:
                if isinstance(item, str):
                    yield event(chat_chunk(cid, model, {"content": item}))
                else:
                    self.metrics.generated(mode, served, item, None)
                    used = usage(item["prompt_tokens"], item["completion_tokens"])
                    yield event(chat_chunk(cid, model, {}, item["finish_reason"], usage=used, citations=citations,
                                           ragtune={"mode": mode}))
                    if include_usage:
                        yield event({**chat_chunk(cid, model, {}), "choices": [], "usage": used})
                item = await self._guarded(anext(stream, None), cancel=stream.cancel,
                                           timeout_s=max(0.001, deadline - time.monotonic()))
        except ApiError as exc:
            yield event(exc.body())
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: stop generating
            stream.cancel()
            raise
        yield "data: [DONE]\n\n"
