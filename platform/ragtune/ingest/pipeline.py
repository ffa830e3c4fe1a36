"""The ingest pipeline: Ray Data reads, validates, parses and chunks files in tasks, embeds chunks
in an actor pool, and the driver writes complete documents to Milvus.

Every row of a run carries the run's write version. A document's chunks are written once all of
them are embedded; after the pipeline, each written document's older versions are deleted
(``VectorStore.settle``), and reads only ever see a document's newest complete version. A run that
stops half-way leaves a version incomplete: readers keep the one before, and the next run redoes it.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ragtune.config import RagtuneConfig, ragtune_home
from ragtune.core.documents import Document, Rejection, RejectReason, id_too_long
from ragtune.embedding import EncoderInfo, TextEncoder, encoder_info
from ragtune.indexing import chunk_document, chunk_row, too_long, unindexable
from ragtune.ingest.sandbox import ParseSandbox
from ragtune.ingest.sources import FileEntry, expand_sources, read_bytes
from ragtune.store import VectorStore
from ragtune.store.collection import new_version

_WRITE_ROWS = 512
_BLOCK_BYTES = 1024 * 1024


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
            "chunk_index": 0, "chunk_count": 0, "text": "", "reason": "", "detail": ""}
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


def process_file(item: dict[str, Any], config: RagtuneConfig, prior: dict[str, str | None],
                  max_model_tokens: int) -> list[dict[str, Any]]:
    """The per-file work of the pipeline (a Ray Data task): read → validate → parse → skip
    unchanged documents → chunk. Returns rows of kind ``chunk``, ``skip`` or ``reject``."""
    entry = FileEntry(item["uri"], item["rel"], int(item["size"]))
    limit = config.validation.max_file_bytes
    docs, rejects = _sandbox(config.validation.parse_timeout_s, config.validation.parse_memory_mb).parse(
        entry, read_bytes(entry, limit), limit)
    rows = [_reject_row(r) for r in rejects]
    for doc in docs:
        if problem := id_too_long(doc.doc_id):
            rows.append(_row("reject", doc, reason=RejectReason.ID_TOO_LONG.value, detail=problem))
            continue
        if problem := too_long(doc, config):
            rows.append(_row("reject", doc, reason=RejectReason.TOO_LARGE.value, detail=problem))
            continue
        if prior.get(doc.doc_id) == doc.content_hash:
            rows.append(_row("skip", doc))
            continue
        pieces = chunk_document(doc, config, max_model_tokens)
        if refused := unindexable(pieces, config):
            rows.append(_row("reject", doc, reason=refused[0].value, detail=refused[1]))
            continue
        rows.extend(_row("chunk", doc, chunk_index=i, chunk_count=len(pieces), text=p) for i, p in enumerate(pieces))
    return rows


class _EmbedChunks:
    """Ray Data actor: one encoder per actor, loaded on the first batch that has chunks (a re-run
    with nothing to embed never loads the model), embedding the chunk rows of each batch."""

    def __init__(self, config: RagtuneConfig, dim: int):
        self.config = config
        self.threads = config.embedding.torch_threads or max(1, (os.cpu_count() or 1) // config.embedding.concurrency)
        self.dim = dim
        self.encoder: TextEncoder | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        is_chunk = batch["kind"] == "chunk"
        vectors = np.zeros((len(is_chunk), self.dim), dtype=np.float32)
        if is_chunk.any():
            if self.encoder is None:
                import torch

                torch.set_num_threads(self.threads)
                self.encoder = TextEncoder(self.config.embedding)
            vectors[is_chunk] = self.encoder.encode([str(t) for t in batch["text"][is_chunk]])
        batch["dense"] = vectors
        return batch


class _DocumentWriter:
    """Driver-side sink: buffers chunk rows until a document is complete, writes in batches, every
    row tagged with the run's write version."""

    def __init__(self, store: VectorStore, model_name: str, version: int):
        self.store = store
        self.model_name = model_name
        self.version = version
        self.partial: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.ready: list[dict[str, Any]] = []
        self.chunks_written = 0

    def add(self, row: dict[str, Any]) -> None:
        rows = self.partial[row["doc_id"]]
        rows.append(row)
        if len(rows) == row["chunk_count"]:
            self.ready.extend(self.partial.pop(row["doc_id"]))
            if len(self.ready) >= _WRITE_ROWS:
                self.flush()

    def flush(self) -> None:
        out = [chunk_row(doc_id=r["doc_id"], chunk_index=r["chunk_index"], chunk_count=r["chunk_count"],
                         text=r["text"], dense=r["dense"].tolist(), title=r["title"], source=r["source"],
                         doc_hash=r["doc_hash"], metadata=json.loads(r["metadata"]), model_name=self.model_name,
                         version=self.version, origin="ingest") for r in self.ready]
        self.chunks_written += self.store.upsert(out)
        self.ready = []


def _duplicate_ids(parsed) -> dict[str, list[str]]:
    """Document ids that more than one source produced (two files with one relative path under two
    sources, a repeated corpus ``_id``): id → every such source, sorted."""
    sources: dict[str, list[str]] = defaultdict(list)
    documents = parsed.filter(lambda row: row["kind"] == "skip" or (row["kind"] == "chunk" and row["chunk_index"] == 0))
    for row in documents.select_columns(["doc_id", "source"]).iter_rows():
        sources[row["doc_id"]].append(row["source"])
    return {doc_id: sorted(found) for doc_id, found in sources.items() if len(found) > 1}


def _duplicate_reject(doc_id: str, sources: list[str]) -> dict[str, Any]:
    return {"source": sources[0], "doc_id": doc_id, "reason": RejectReason.DUPLICATE_ID.value,
            "detail": f"document id {doc_id!r} comes from {len(sources)} sources: {', '.join(sources)}; "
                      "nothing of it was written — give each document its own id"}


def _gpus_per_encoder(config: RagtuneConfig) -> float:
    """``embedding.num_gpus_per_actor``, or one GPU per encoder actor when the cluster has GPUs."""
    import ray

    if config.embedding.num_gpus_per_actor is not None:
        return config.embedding.num_gpus_per_actor
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= config.embedding.concurrency else 0.0


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
    stored = store.documents()
    prior = {doc_id: d.doc_hash for doc_id, d in stored.items()}
    version = summary.version = new_version()

    init_ray()
    # Small blocks stream: encoder actors share the work of one big file, and embedded chunks
    # reach the writer while the rest are still being embedded.
    ray.data.DataContext.get_current().target_max_block_size = _BLOCK_BYTES
    items = [{"uri": f.uri, "rel": f.rel, "size": f.size} for f in files]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * config.ingest.read_concurrency))
    # local files exist on this node only (storage URIs are read from any node)
    local = on_driver_node() if not all(is_storage_uri(f.uri) for f in files) else {}
    ds = ds.flat_map(process_file, fn_kwargs={"config": config, "prior": prior, "max_model_tokens": info.max_tokens},
                     compute=ray.data.TaskPoolStrategy(size=min(config.ingest.read_concurrency, len(items))), **local)
    # every document id must be known before any is written: an id from two sources is rejected whole
    ds = ds.materialize()
    duplicates = _duplicate_ids(ds)
    if duplicates:
        ds = ds.filter(lambda row, ids=frozenset(duplicates): row["doc_id"] not in ids or row["kind"] == "reject")
    ds = ds.map_batches(_EmbedChunks, fn_constructor_kwargs={"config": config, "dim": info.dim},
                        batch_size=config.embedding.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=config.embedding.concurrency),
                        num_cpus=config.embedding.num_cpus_per_actor, num_gpus=_gpus_per_encoder(config))

    writer = _DocumentWriter(store, info.model.name, version)
    rejects: list[dict[str, Any]] = [_duplicate_reject(doc_id, sources) for doc_id, sources in sorted(duplicates.items())]
    chunked: set[str] = set()
    unchanged: set[str] = set()
    for row in ds.iter_rows():
        if row["kind"] == "reject":
            rejects.append({k: row[k] for k in ("source", "doc_id", "reason", "detail")})
        elif row["kind"] == "skip":
            unchanged.add(row["doc_id"])
        else:
            chunked.add(row["doc_id"])
            summary.chunks_embedded += 1
            writer.add(row)
    writer.flush()
    if writer.partial:  # a pipeline bug, never a user error: refuse to record half documents
        raise RuntimeError(f"incomplete documents after the pipeline: {sorted(writer.partial)[:5]}")

    # Older versions of the documents written, then documents gone from the sources: those ingested
    # before (documents written through the API too, when asked). A rejected input keeps its
    # previously ingested documents (no data lost): they are not pruned.
    stale = [d for d in chunked if d in prior]
    summary.chunks_deleted = store.settle(sorted(chunked), version)
    prunable = {d for d, doc in stored.items() if doc.origin == "ingest" or config.ingest.prune_api_documents}
    gone = _pruned(store, prunable - chunked - unchanged, rejects) if config.ingest.prune else []
    summary.chunks_deleted += store.delete_documents(gone) if gone else 0
    store.flush()
    store.close()

    summary.new, summary.changed, summary.unchanged = len(chunked) - len(stale), len(stale), len(unchanged)
    summary.documents = len(chunked) + len(unchanged)
    summary.pruned = len(gone)
    summary.rejected = len(rejects)
    summary.reject_reasons = dict(Counter(r["reason"] for r in rejects))
    summary.chunks_written = writer.chunks_written
    summary.wall_s = time.perf_counter() - started
    summary.report_dir = str(_write_reports(summary, rejects, report_dir))
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
