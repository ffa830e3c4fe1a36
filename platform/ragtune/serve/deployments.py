"""The Serve deployments: thin shells around ragtune's runtimes (TextEncoder, VectorStore,
Generator). The FastAPI ingress lives in ``ingress.py``; ``app.py`` composes them."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from ray import serve

from ragtune.config import RagtuneConfig, validate_config
from ragtune.serve.api import RetrievalUnavailable

# Serve's logger: in a replica its lines go to the replica's log file with the request's id
log = logging.getLogger("ray.serve")


def _config(args: dict[str, Any]) -> RagtuneConfig:
    return validate_config(args, "the Serve application's args")


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=64, max_queued_requests=256)
class Embedder:
    """Query embeddings, batched across concurrent requests with ``@serve.batch``."""

    def __init__(self, args: dict[str, Any]):
        from ragtune.embedding import load_encoder

        cfg = _config(args)
        self.encoder = load_encoder(cfg.embedding)
        self.counter = None  # the tokenizer, loaded by the first /v1/embeddings request
        self.embed_query.set_max_batch_size(cfg.serve.embed_batch_size)
        self.embed_query.set_batch_wait_timeout_s(cfg.serve.embed_batch_wait_s)

    def info(self) -> dict[str, Any]:
        return {"model": self.encoder.name, "dim": self.encoder.dim, "max_tokens": self.encoder.max_tokens}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def embed_query(self, texts: list[str]) -> list[list[float]]:
        return (await asyncio.to_thread(self.encoder.encode, texts)).tolist()

    async def embed_many(self, texts: list[str]) -> list[list[float]]:
        """Document chunks: already a batch."""
        return (await asyncio.to_thread(self.encoder.encode, texts)).tolist()

    async def embed_counted(self, texts: list[str]) -> dict[str, Any]:
        """``/v1/embeddings``: the vectors of ``texts`` and the tokens the encoder read (each text's,
        cut at the model's length, plus its two special tokens)."""
        from ragtune.embedding import TokenCounter

        if self.counter is None:
            self.counter = await asyncio.to_thread(TokenCounter, self.encoder.model_info)
        vectors = await self.embed_many(texts)
        spans = await asyncio.to_thread(lambda: [len(self.counter.spans(t)) for t in texts])
        return {"vectors": vectors, "tokens": sum(min(n, self.encoder.max_tokens) + 2 for n in spans)}


class InvalidFilter(ValueError):
    """Milvus refused the request's filter expression."""


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=32, max_queued_requests=128)
class Retriever:
    """Search and live document updates on the Milvus collection. A failed Milvus call drops the
    connection, and the next request connects again, so an outage ends without a restart."""

    def __init__(self, args: dict[str, Any], embedder):
        self.cfg = _config(args)
        self.embedder = embedder
        self._store = None
        self._encoder: dict[str, Any] | None = None

    async def encoder(self) -> dict[str, Any]:
        """The collection's encoder: model name, dimension, longest input."""
        if self._encoder is None:
            self._encoder = await self.embedder.info.remote()
        return self._encoder

    async def _call(self, fn, *args, **kwargs):
        """Run a VectorStore method off the event loop; Milvus unreachable, the collection missing or
        built with another encoder → RetrievalUnavailable (other errors are bugs, answered 500)."""
        import grpc
        from pymilvus.exceptions import MilvusException

        from ragtune.store import VectorStore
        from ragtune.store.collection import CollectionMismatch
        from ragtune.store.local import LocalMilvusError

        try:
            if self._store is None:
                self._store = await asyncio.to_thread(VectorStore, self.cfg.milvus)
            return await asyncio.to_thread(getattr(self._store, fn), *args, **kwargs)
        except MilvusException as exc:
            if kwargs.get("filter") and any(word in str(exc).lower() for word in ("expr", "filter", "parse")):
                raise InvalidFilter(f"Milvus refused the filter: {exc.message}") from None
            self._store = None
            raise RetrievalUnavailable(f"Milvus at {self.cfg.milvus.uri or 'the local server'}: {exc}") from None
        except (grpc.RpcError, OSError, LocalMilvusError, LookupError, CollectionMismatch) as exc:
            self._store = None
            raise RetrievalUnavailable(f"Milvus at {self.cfg.milvus.uri or 'the local server'}: {exc}") from None

    async def search(self, query: str, top_k: int, filter: str = "", mode: str | None = None) -> dict[str, Any]:
        """The ``hits`` for ``query``, and how long the query's embedding (``embed_s``, None in bm25)
        and the Milvus search (``search_s``) took."""
        search = self.cfg.search.model_copy(update={"mode": mode}) if mode else self.cfg.search
        started = time.perf_counter()
        vector = [await self.embedder.embed_query.remote(query)] if search.mode != "bm25" else None
        embedded = time.perf_counter()
        hits = await self._call("search", vector, [query], search, k=top_k, filter=filter)
        searched = time.perf_counter()
        log.info("search %s k=%d%s: %d hits (embed %.1f ms, search %.1f ms)", search.mode, top_k,
                 " filtered" if filter else "", len(hits[0]), (embedded - started) * 1000, (searched - embedded) * 1000)
        return {"hits": [{"id": h.id, "doc_id": h.doc_id, "chunk_index": h.chunk_index, "score": h.score, "text": h.text,
                          "title": h.title, "source": h.source, "metadata": h.metadata} for h in hits[0]],
                "embed_s": embedded - started if vector else None, "search_s": searched - embedded}

    async def embed(self, texts: list[str]) -> dict[str, Any]:
        """Vectors of ``texts`` by the encoder queries are searched with, and the tokens it read."""
        return await self.embedder.embed_counted.remote(texts)

    async def healthy(self) -> bool:
        try:
            await self._call("exists")
            return True
        except RetrievalUnavailable:
            return False

    async def upsert(self, documents: list[dict[str, Any]]) -> dict[str, Any]:
        """Chunk, embed and write documents, each as a new version that replaces the one before and
        is searchable (flushed, strongly consistent) when this returns; a result per document.
        Every document is chunked first: if any cannot be stored (too long, no chunk, too many),
        none is written, and the answer is ``{"rejected": [(position, doc_id, why), ...]}`` — a
        user's error, returned rather than raised, so that the replica does not log it as a failure.
        """
        from ragtune.core.documents import Document
        from ragtune.indexing import chunk_document, chunk_row, too_long, unindexable
        from ragtune.store.collection import new_version

        info = await self.encoder()
        docs = [Document(doc_id=d["doc_id"], text=d["text"], title=d["title"], source=d["source"] or f"api:{d['doc_id']}",
                         metadata=d["metadata"]) for d in documents]
        pieces, problems = [], []
        for i, doc in enumerate(docs):
            problem = too_long(doc, self.cfg)
            chunks = [] if problem else chunk_document(doc, self.cfg, info["max_tokens"])
            refused = None if problem else unindexable(chunks, self.cfg)
            if problem or refused:
                problems.append((i, doc.doc_id, problem or refused[1]))
            pieces.append(chunks)
        if problems:
            return {"rejected": problems}
        await self._call("ensure", info["model"], info["dim"], self.cfg.milvus.bm25_stop_words)
        results = []
        for doc, texts in zip(docs, pieces):
            version = new_version()
            vectors = await self.embedder.embed_many.remote(texts)
            rows = [chunk_row(doc_id=doc.doc_id, chunk_index=i, chunk_count=len(texts), text=text, dense=vector,
                              title=doc.title, source=doc.source, doc_hash=doc.content_hash, metadata=doc.metadata,
                              model_name=info["model"], version=version, origin="api")
                    for i, (text, vector) in enumerate(zip(texts, vectors))]
            written, replaced = await self._call("write_document", doc.doc_id, rows, version)
            results.append({"doc_id": doc.doc_id, "status": "written", "version": version, "chunks": written,
                            "replaced_chunks": replaced})
        return {"object": "list", "data": results, "documents": len(results), "chunks": sum(r["chunks"] for r in results)}

    async def delete(self, doc_id: str) -> int:
        """Chunks deleted (0: no such document)."""
        return await self._call("delete_documents", [doc_id])


class _LoadedAdapter:
    """What ``@serve.multiplexed`` caches; evicting it frees the adapter's weights (and counts)."""

    def __init__(self, backend, slot: str, counts: dict[str, int]):
        self.backend, self.slot, self.counts = backend, slot, counts

    def __del__(self):
        self.backend.unload_adapter(self.slot)
        self.counts["evictions"] += 1


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=4, max_queued_requests=16)
class Generator:
    """The chat model (``generator.backend``) with LoRA adapters multiplexed per replica:
    the request's multiplexed model id is the adapter name ("" for the base model); the least
    recently used adapters are unloaded."""

    def __init__(self, args: dict[str, Any]):
        from ragtune.generation import make_backend
        from ragtune.serve.adapters import AdapterRegistry

        cfg = _config(args)
        self.backend = make_backend(cfg.generator, cfg.serve.max_loaded_adapters)
        self.registry = AdapterRegistry(cfg.serve)
        self._loads = itertools.count()
        # cumulative, returned with every answer for the Ingress's /metrics
        self.adapter_counts = {"replica": serve.get_replica_context().replica_id.unique_id, "loads": 0, "evictions": 0}

        async def load_adapter(name: str) -> _LoadedAdapter:
            path = await asyncio.to_thread(self.registry.local_path, name)
            slot = f"{name}#{next(self._loads)}"  # unique: a late __del__ never unloads a newer load
            await self.backend.load_adapter(slot, path)
            self.adapter_counts["loads"] += 1
            return _LoadedAdapter(self.backend, slot, self.adapter_counts)

        self.adapter = serve.multiplexed(max_num_models_per_replica=cfg.serve.max_loaded_adapters)(load_adapter)

    async def _slot(self) -> str | None:
        name = serve.get_multiplexed_model_id()
        return (await self.adapter(name)).slot if name else None

    async def complete(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        from ragtune.generation import SamplingParams

        completion = await self.backend.complete(messages, SamplingParams(**params), await self._slot())
        return {**completion.__dict__, "adapters": dict(self.adapter_counts)}

    async def stream(self, messages: list[dict[str, str]], params: dict[str, Any]):
        """Text pieces as they are generated, then the completion's summary (a dict)."""
        from ragtune.generation import Completion, SamplingParams

        async for item in self.backend.stream(messages, SamplingParams(**params), await self._slot()):
            yield {**item.__dict__, "adapters": dict(self.adapter_counts)} if isinstance(item, Completion) else item
