"""The ingest pipeline: Ray Data reads, validates, parses and chunks files in tasks, embeds chunks
in an actor pool, and write tasks upsert them into Milvus; the driver holds counts, not rows.

Change detection is per batch of files: the parse task looks up the stored versions of just the
documents it produced, and chunks only the new and changed ones. Every row of a run carries the
run's write version, so a document is visible whole or not at all: a read shows one complete
version of each document. A write task that holds every chunk of a document settles it
(deletes its older versions, ``VectorStore.settle``); the driver settles the documents whose chunks
were spread over several write tasks. A run that stops half-way leaves some versions incomplete:
readers keep the one before, and the next run redoes them.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ragtune.config import MilvusConfig, RagtuneConfig, ragtune_home
from ragtune.core.documents import Document, Rejection, RejectReason, id_too_long
from ragtune.embedding import EncoderInfo, TextEncoder, encoder_info, load_encoder
from ragtune.indexing import chunk_document, chunk_row, too_long, unindexable
from ragtune.ingest.parsers import ParseOptions
from ragtune.ingest.sandbox import ParseSandbox
from ragtune.ingest.sources import FileEntry, expand_sources, read_bytes
from ragtune.logfile import work_done
from ragtune.store import VectorStore
from ragtune.store.collection import StoredDocument, new_version

_BLOCK_BYTES = 1024 * 1024
_FILES_PER_LOOKUP = 32  # files per parse batch: their documents' stored versions are looked up at once


@dataclass
class IngestSummary:
    """What one ingest run did; ``ok`` is False when rejections exceed the allowed fraction."""

    collection: str
    version: int = 0  # the run's write version: every row it wrote carries it
    files: int = 0
    documents: int = 0
    new: int = 0
    changed: int = 0
    unchanged: int = 0
    pruned: int = 0
    rejected: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    chunks_embedded: int = 0
    reject_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    report_dir: str = ""
    max_reject_fraction: float = 0.0

    @property
    def reject_fraction(self) -> float:
        total = self.documents + self.rejected
        return self.rejected / total if total else 0.0

    @property
    def ok(self) -> bool:
        return self.reject_fraction <= self.max_reject_fraction

    @property
    def docs_per_s(self) -> float:
        return self.documents / self.wall_s if self.wall_s else 0.0


def _row(kind: str, doc: Document | None = None, **extra: Any) -> dict[str, Any]:
    base = {"kind": kind, "doc_id": "", "source": "", "title": "", "doc_hash": "", "metadata": "{}",
            "chunk_index": 0, "chunk_count": 0, "text": "", "reason": "", "detail": "", "stored": False}
    if doc is not None:
        base.update(doc_id=doc.doc_id, source=doc.source, title=doc.title, doc_hash=doc.content_hash,
                    metadata=json.dumps(doc.metadata, ensure_ascii=False))
    return {**base, **extra}


def _reject_row(r: Rejection) -> dict[str, Any]:
    return _row("reject", doc_id=r.doc_id, source=r.source, reason=r.reason.value, detail=r.detail)


@lru_cache(maxsize=2)
def _sandbox(timeout_s: float, memory_mb: int) -> ParseSandbox:
    """The parsing child of this worker process, reused by every file it parses."""
    return ParseSandbox(timeout_s, memory_mb)


@lru_cache(maxsize=4)
def _store(milvus: str, collection: str) -> VectorStore:
    """This worker process's connection to the collection (``milvus``: the config as JSON)."""
    return VectorStore(MilvusConfig.model_validate_json(milvus), collection)


def index_files(items: Iterable[Mapping[str, Any]], config: RagtuneConfig, max_model_tokens: int,
                stored: Callable[[Sequence[str]], Mapping[str, StoredDocument]]) -> list[dict[str, Any]]:
    """The per-file work of the pipeline: read → validate → parse each file, look up the stored
    versions of the documents found (``stored``, one call for all of them), skip the unchanged ones
    and chunk the rest. Returns rows of kind ``chunk`` (``stored``: the document had a version
    before), ``skip`` or ``reject``."""
    limit = config.validation.max_file_bytes
    options = ParseOptions(limit, config.ingest.notebook_outputs, config.ingest.table_documents)
    sandbox = _sandbox(config.validation.parse_timeout_s, config.validation.parse_memory_mb)
    rows: list[dict[str, Any]] = []
    docs: list[Document] = []
    for item in items:
        entry = FileEntry(item["uri"], item["rel"], int(item["size"]))
        parsed, rejects = sandbox.parse(entry, read_bytes(entry, limit), options)
        rows.extend(_reject_row(r) for r in rejects)
        for doc in parsed:
            if problem := id_too_long(doc.doc_id):
                rows.append(_row("reject", doc, reason=RejectReason.ID_TOO_LONG.value, detail=problem))
            elif problem := too_long(doc, config):
                rows.append(_row("reject", doc, reason=RejectReason.TOO_LARGE.value, detail=problem))
            else:
                docs.append(doc)
    before = stored(sorted({doc.doc_id for doc in docs})) if docs else {}
    for doc in docs:
        prior = before.get(doc.doc_id)
        if prior is not None and prior.doc_hash == doc.content_hash:
            rows.append(_row("skip", doc))
            continue
        pieces = chunk_document(doc, config, max_model_tokens)
        if refused := unindexable(pieces, config):
            rows.append(_row("reject", doc, reason=refused[0].value, detail=refused[1]))
            continue
        rows.extend(_row("chunk", doc, chunk_index=i, chunk_count=len(pieces), text=p, stored=prior is not None)
                    for i, p in enumerate(pieces))
    return rows


def _index_batch(batch, config: RagtuneConfig, max_model_tokens: int, files_total: int):
    """Ray Data task: ``index_files`` over one batch of files, looking up their documents in Milvus."""
    import pyarrow as pa

    store = _store(config.milvus.model_dump_json(), config.milvus.collection)
    rows = index_files(batch.to_pylist(), config, max_model_tokens, store.documents)
    work_done("parsing", batch.num_rows, files_total, "files")
    schema = _schema()
    return pa.Table.from_pydict({c: [r[c] for r in rows] for c in schema.names}, schema=schema)


@lru_cache(maxsize=1)
def _schema():
    """The parsed rows' schema (pyarrow is imported here: the parsing child, which imports this
    package, must stay small)."""
    import pyarrow as pa

    text, number = pa.string(), pa.int64()
    return pa.schema([("kind", text), ("doc_id", text), ("source", text), ("title", text), ("doc_hash", text),
                      ("metadata", text), ("chunk_index", number), ("chunk_count", number), ("text", text),
                      ("reason", text), ("detail", text), ("stored", pa.bool_())])


class _EmbedChunks:
    """Ray Data actor: one encoder per actor, loaded with its first batch, embedding the chunk rows
    of each batch (a run with nothing to embed has no encoder stage at all)."""

    def __init__(self, config: RagtuneConfig, chunks_total: int):
        self.config = config
        self.chunks_total = chunks_total
        self.threads = config.embedding.torch_threads or max(1, (os.cpu_count() or 1) // config.embedding.concurrency)
        self.encoder: TextEncoder | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.encoder is None:
            self.encoder = load_encoder(self.config.embedding, self.threads)
        batch["dense"] = self.encoder.encode([str(t) for t in batch["text"]])
        work_done("embedding", len(batch["text"]), self.chunks_total, "chunks")
        return batch


def _chunk_sink(config: RagtuneConfig, model_name: str, version: int):
    """The Ray Data sink of embedded chunks (a factory: ``Datasink`` is imported with Ray). Its
    write tasks reserve no CPU: Milvus does the work, and the encoders may hold every core."""
    from ray.data import Datasink

    class ChunkSink(Datasink):
        """Write tasks upsert the chunks of their blocks (requests of at most
        ``milvus.max_request_bytes``), every row tagged with the run's write version, and settle the
        documents whose every chunk they wrote. Each returns counts; the driver adds them up."""

        def __init__(self):
            self.milvus = config.milvus.model_dump_json()
            self.collection = config.milvus.collection
            self.max_request_bytes = config.milvus.max_request_bytes
            self.written = self.deleted = 0
            self.spread: Counter[str] = Counter()  # chunks written per document not settled by a task
            self.expected: dict[str, int] = {}

        @property
        def min_bytes_per_write(self) -> int:
            return self.max_request_bytes

        def write(self, blocks, ctx) -> dict[str, Any]:
            from ray.data.block import BlockAccessor

            store = _store(self.milvus, self.collection)
            written: Counter[str] = Counter()
            expected: dict[str, int] = {}
            for block in blocks:
                batch = BlockAccessor.for_block(block).to_batch_format("numpy")
                rows = [chunk_row(doc_id=str(batch["doc_id"][i]), chunk_index=int(batch["chunk_index"][i]),
                                  chunk_count=int(batch["chunk_count"][i]), text=str(batch["text"][i]),
                                  dense=batch["dense"][i].tolist(), title=str(batch["title"][i]),
                                  source=str(batch["source"][i]), doc_hash=str(batch["doc_hash"][i]),
                                  metadata=json.loads(batch["metadata"][i]), model_name=model_name, version=version,
                                  origin="ingest") for i in range(len(batch["doc_id"]))]
                store.upsert(rows)
                for r in rows:
                    written[r["doc_id"]] += 1
                    expected[r["doc_id"]] = r["chunk_count"]
            whole = sorted(d for d, n in written.items() if n == expected[d])
            return {"written": sum(written.values()), "deleted": store.settle(whole, version) if whole else 0,
                    "spread": {d: (n, expected[d]) for d, n in written.items() if n != expected[d]}}

        def on_write_complete(self, write_result) -> None:
            for result in write_result.write_returns:
                self.written += result["written"]
                self.deleted += result["deleted"]
                for doc, (n, expected) in result["spread"].items():
                    self.spread[doc] += n
                    self.expected[doc] = expected

    return ChunkSink()


class _Seen(NamedTuple):
    """One document of a run, as the driver keeps it."""

    source: str
    kind: str  # "chunk" (to write) or "skip" (unchanged)
    stored: bool  # a version of it was stored before the run
    chunks: int


@dataclass
class _RunIndex:
    """The driver's view of a run's parsed documents, one entry per document (no chunk rows)."""

    documents: dict[str, _Seen] = field(default_factory=dict)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # id → every source that produced it, sorted
    rejects: list[dict[str, Any]] = field(default_factory=list)

    def kept(self, kind: str) -> list[str]:
        return [d for d, seen in self.documents.items() if seen.kind == kind and d not in self.duplicates]


def _index_run(parsed) -> _RunIndex:
    """Reads the rejections and one row per document (its first chunk, or its skip row) of the
    parsed dataset. An id that more than one source produced (two files with one relative path
    under two sources, a repeated corpus ``_id``) is a duplicate."""
    index = _RunIndex()
    heads = parsed.map_batches(_heads, batch_format="pyarrow", batch_size=None)
    for row in heads.iter_rows():
        doc_id, source = row["doc_id"], row["source"]
        if row["kind"] == "reject":
            index.rejects.append({"source": source, "doc_id": doc_id, "reason": row["reason"], "detail": row["detail"]})
        elif doc_id in index.documents:
            index.duplicates.setdefault(doc_id, [index.documents[doc_id].source]).append(source)
        else:
            index.documents[doc_id] = _Seen(source, row["kind"], bool(row["stored"]), int(row["chunk_count"]))
    for doc_id, sources in sorted(index.duplicates.items()):
        sources.sort()
        index.rejects.append(_duplicate_reject(doc_id, sources))
    return index


def _heads(batch):
    """One row per document (its first chunk, or its skip row) and the rejections of a parsed
    batch, without the chunks' text."""
    import pyarrow.compute as pc

    keep = pc.or_(pc.not_equal(batch["kind"], "chunk"), pc.equal(batch["chunk_index"], 0))
    return batch.filter(keep).select(["kind", "doc_id", "source", "reason", "detail", "chunk_count", "stored"])


def _chunks_to_write(batch, duplicates: frozenset[str]):
    """The chunk rows of a parsed batch, without those of duplicate ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.equal(batch["kind"], "chunk")
    if duplicates:
        keep = pc.and_(keep, pc.invert(pc.is_in(batch["doc_id"], pa.array(sorted(duplicates)))))
    return batch.filter(keep)


def _duplicate_reject(doc_id: str, sources: list[str]) -> dict[str, Any]:
    return {"source": sources[0], "doc_id": doc_id, "reason": RejectReason.DUPLICATE_ID.value,
            "detail": f"document id {doc_id!r} comes from {len(sources)} sources: {', '.join(sources)}; "
                      "nothing of it was written — give each document its own id"}


def _gpus_per_encoder(config: RagtuneConfig) -> float:
    """``embedding.num_gpus_per_actor``, or one GPU per encoder actor when the cluster has GPUs."""
    from ragtune.runtime import cluster_resources

    if config.embedding.num_gpus_per_actor is not None:
        return config.embedding.num_gpus_per_actor
    return 1.0 if cluster_resources().get("GPU", 0) >= config.embedding.concurrency else 0.0


def _pruned(store: VectorStore, missing: set[str], rejects: list[dict[str, Any]]) -> list[str]:
    """Documents to delete: stored but not seen this run, unless they came from a rejected input
    (a whole file, e.g. a corpus.jsonl that is now corrupt, or one line of it)."""
    rejected = tuple(r["source"] for r in rejects) + tuple(r["doc_id"] for r in rejects if r["doc_id"])
    if not rejected or not missing:
        return sorted(missing)
    sources = store.sources(sorted(missing))
    return sorted(d for d in missing if d not in rejected and not sources.get(d, "").startswith(rejected))


def run_ingest(config: RagtuneConfig, report_dir: str | Path | None = None) -> IngestSummary:
    """Ingest ``config.ingest.sources`` into ``config.milvus.collection``.

    Returns the run's summary; rejected inputs are listed in ``<report_dir>/rejected.jsonl``.

    Raises:
        SourceError: a source does not exist.
        CollectionMismatch: the collection was built with another embedding model.
    """
    import ray

    from ragtune.runtime import init_ray, is_storage_uri, on_driver_node

    started = time.perf_counter()
    summary = IngestSummary(collection=config.milvus.collection,
                            max_reject_fraction=config.validation.max_reject_fraction)
    files = expand_sources(config.ingest.sources)
    summary.files = len(files)
    info: EncoderInfo = encoder_info(config.embedding.model)
    store = VectorStore(config.milvus)
    store.ensure(info.model.name, info.dim, config.milvus.bm25_stop_words)  # fails before any write
    version = summary.version = new_version()

    init_ray()
    # Small blocks stream: encoder actors share the work of one big file, and embedded chunks
    # reach the write tasks while the rest are still being embedded.
    ray.data.DataContext.get_current().target_max_block_size = _BLOCK_BYTES
    items = [{"uri": f.uri, "rel": f.rel, "size": f.size} for f in files]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * config.ingest.read_concurrency))
    # local files exist on this node only (storage URIs are read from any node)
    local = on_driver_node() if not all(is_storage_uri(f.uri) for f in files) else {}
    ds = ds.map_batches(_index_batch, fn_kwargs={"config": config, "max_model_tokens": info.max_tokens,
                                                 "files_total": len(items)},
                        batch_size=_FILES_PER_LOOKUP, batch_format="pyarrow",
                        compute=ray.data.TaskPoolStrategy(size=min(config.ingest.read_concurrency, len(items))), **local)
    # every document id must be known before any is written: an id from two sources is rejected whole
    ds = ds.materialize()
    index = _index_run(ds)
    chunked, unchanged = index.kept("chunk"), index.kept("skip")
    summary.chunks_embedded = sum(index.documents[d].chunks for d in chunked)
    sink = _chunk_sink(config, info.model.name, version)
    if chunked:
        ds = ds.map_batches(_chunks_to_write, fn_kwargs={"duplicates": frozenset(index.duplicates)},
                            batch_format="pyarrow", batch_size=None)
        ds = ds.map_batches(_EmbedChunks, fn_constructor_kwargs={"config": config,
                                                                 "chunks_total": summary.chunks_embedded},
                            batch_size=config.embedding.batch_size,
                            compute=ray.data.ActorPoolStrategy(size=config.embedding.concurrency),
                            num_cpus=config.embedding.num_cpus_per_actor, num_gpus=_gpus_per_encoder(config))
        ds.write_datasink(sink, ray_remote_args={"num_cpus": 0})
    # documents whose chunks were spread over several write tasks are settled here
    incomplete = sorted(d for d, n in sink.spread.items() if n != sink.expected[d])
    if incomplete or sink.written != summary.chunks_embedded:  # a pipeline bug, never a user error
        raise RuntimeError(f"{sink.written} of {summary.chunks_embedded} chunks written; "
                           f"incomplete documents: {incomplete[:5]}")
    summary.chunks_written = sink.written
    summary.chunks_deleted = sink.deleted + store.settle(sorted(sink.spread), version)

    # Documents gone from the sources: those ingested before (documents written through the API
    # too, when asked). A rejected input keeps its previously ingested documents (no data lost).
    gone: list[str] = []
    if config.ingest.prune:
        seen = set(chunked) | set(unchanged)
        prunable = {d for d, doc in store.documents().items()
                    if d not in seen and (doc.origin == "ingest" or config.ingest.prune_api_documents)}
        gone = _pruned(store, prunable, index.rejects)
        summary.chunks_deleted += store.delete_documents(gone) if gone else 0
    store.flush()
    store.close()

    changed = sum(1 for d in chunked if index.documents[d].stored)
    summary.new, summary.changed, summary.unchanged = len(chunked) - changed, changed, len(unchanged)
    summary.documents = len(chunked) + len(unchanged)
    summary.pruned = len(gone)
    summary.rejected = len(index.rejects)
    summary.reject_reasons = dict(Counter(r["reason"] for r in index.rejects))
    summary.wall_s = time.perf_counter() - started
    summary.report_dir = str(_write_reports(summary, index.rejects, report_dir))
    return summary


def _write_reports(summary: IngestSummary, rejects: list[dict[str, Any]], report_dir: str | Path | None) -> Path:
    out = Path(report_dir) if report_dir else ragtune_home() / "reports" / "ingest" / summary.collection
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "rejected.jsonl", "w", encoding="utf-8") as fh:
        for r in rejects:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    payload = {**asdict(summary), "reject_fraction": summary.reject_fraction, "docs_per_s": summary.docs_per_s,
               "ok": summary.ok}
    (out / "summary.json").write_text(json.dumps(payload, indent=2))
    return out
