"""One Milvus collection of chunks: schema, batched writes, deletes and the three search modes."""

from __future__ import annotations

import json
import os
import random
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.config import MilvusConfig, SearchConfig
from ragtune.core.documents import MAX_DOC_ID_BYTES
from ragtune.store.local import connect_uri

MODEL_PROPERTY = "ragtune.embedding_model"
DIM_PROPERTY = "ragtune.embedding_dim"
SCHEMA_PROPERTY = "ragtune.schema"
SCHEMA = "2"  # 2: every chunk row carries its document's write version and origin
OUTPUT_FIELDS = ["doc_id", "chunk_index", "text", "title", "source", "doc_hash", "metadata", "version"]
_MAX_TEXT_BYTES = 65535
_CONSISTENCY = "Strong"
_COLLECTION_NOT_LOADED = 101  # Milvus's code for a released collection
_PAGE_ROWS = 4096  # rows per page of a scan
_IDS_PER_FILTER = 500  # document ids per `doc_id in [...]` filter
_MAX_LIMIT = 16384  # Milvus's largest query and search limit
_CONCURRENT_FLUSH = "current_seq is monotonic"  # milvus-lite's refusal of a flush racing another
_FLUSH_ATTEMPTS = 5
_REMEMBERED_VERSIONS = 100_000  # complete (document, version) pairs a store remembers for its reads


class CollectionMismatch(ValueError):
    """The collection was built with another embedding model, or by an earlier ragtune."""


@dataclass(frozen=True)
class StoredDocument:
    """A document as the collection holds it: its content hash when exactly one complete version is
    stored (None: incomplete, or versions left by an interrupted or concurrent write — the next
    ingest redoes it), and who wrote it (``ingest`` or ``api``)."""

    doc_hash: str | None
    origin: str


def new_version() -> int:
    """A write version: microseconds since the epoch and three random digits, so that versions of
    one document from writers on different machines order by time and never tie."""
    return time.time_ns() // 1000 * 1000 + random.randrange(1000)


@dataclass(frozen=True)
class SearchHit:
    id: str
    doc_id: str
    chunk_index: int
    score: float
    text: str
    title: str
    source: str
    metadata: dict[str, Any]
    version: int


def _connection_lost(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("unavailable", "connection refused", "fail connecting", "connect failed"))


def _string_list(values: Sequence[str]) -> str:
    """A Milvus expression list literal (filter templates are not supported by milvus-lite)."""
    return json.dumps(list(values), ensure_ascii=False)


def _id_filters(doc_ids: Sequence[str]) -> Iterator[str]:
    """``doc_id in [...]`` filters over ``doc_ids``, 500 ids each."""
    for start in range(0, len(doc_ids), _IDS_PER_FILTER):
        yield f"doc_id in {_string_list(doc_ids[start : start + _IDS_PER_FILTER])}"


def _truncate_utf8(text: str, max_bytes: int) -> str:
    raw = text.encode("utf-8")
    return text if len(raw) <= max_bytes else raw[:max_bytes].decode("utf-8", errors="ignore")


class VectorStore:
    """A chunk collection in Milvus (local milvus-lite server or a real Milvus)."""

    def __init__(self, cfg: MilvusConfig, collection: str | None = None):
        self.cfg = cfg
        self.name = collection or cfg.collection
        self.uri, self._token = connect_uri(cfg)
        self._local = not (cfg.uri or os.environ.get("MILVUS_URI"))  # ragtune's own milvus-lite server
        self._complete: OrderedDict[tuple[str, int], None] = OrderedDict()  # versions known whole (LRU)
        self.client = self._connect()

    def _connect(self):
        from pymilvus import MilvusClient

        if self._local:
            self.uri, self._token = connect_uri(self.cfg)  # a stopped local server is started again
        # pymilvus pings every 10 s; milvus-lite's gRPC server answers that with "too_many_pings".
        options = {"grpc_options": {"grpc.keepalive_time_ms": 300_000}} if self._local else {}
        return MilvusClient(uri=self.uri, token=self._token, timeout=self.cfg.timeout_s, **options)

    def close(self) -> None:
        self.client.close()

    def _request(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(collection, ...)``, recovering once from a restarted Milvus: it brings
        collections back released (they are loaded again), and a lost connection is made again."""
        from pymilvus.exceptions import MilvusException

        try:
            return getattr(self.client, method)(self.name, *args, **kwargs)
        except MilvusException as exc:
            if exc.code != _COLLECTION_NOT_LOADED and not _connection_lost(exc):
                raise
            if _connection_lost(exc):
                self.client.close()
                self.client = self._connect()
            self.exists()  # loads the collection
        return getattr(self.client, method)(self.name, *args, **kwargs)

    # -- lifecycle -------------------------------------------------------------------------

    def exists(self) -> bool:
        """Whether the collection exists; if it does, it is loaded for reads (a restarted
        milvus-lite server, like a real Milvus, brings collections back released)."""
        if not self.client.has_collection(self.name):
            return False
        if self.client.get_load_state(self.name)["state"].name != "Loaded":
            self.client.load_collection(self.name)
        return True

    def embedding_model(self) -> tuple[str, int] | None:
        """The (model, dim) the collection was built with, or None when it does not exist."""
        if not self.exists():
            return None
        props = self.client.describe_collection(self.name).get("properties", {})
        return props.get(MODEL_PROPERTY, ""), int(props.get(DIM_PROPERTY, 0) or 0)

    def check_model(self, model: str, dim: int) -> None:
        """Fail before any read or write when the collection's embedding model, or its schema,
        differs from this ragtune's."""
        built = self.embedding_model()
        if built is None:
            raise LookupError(f"collection {self.name!r} does not exist at {self.uri}; run `ragtune ingest` first")
        schema = self.client.describe_collection(self.name).get("properties", {}).get(SCHEMA_PROPERTY, "1")
        if schema != SCHEMA:
            raise CollectionMismatch(
                f"collection {self.name!r} was built by an earlier ragtune (schema {schema}, without write versions; "
                f"this one writes schema {SCHEMA}): ingest into another milvus.collection, or drop this one "
                "(`ragtune quickstart --fresh` drops the quickstart's) and ingest again")
        if built != (model, dim):
            raise CollectionMismatch(
                f"collection {self.name!r} was built with embedding model {built[0]!r} (dim {built[1]}), "
                f"but {model!r} (dim {dim}) is configured; use embedding.model={built[0]!r} or "
                "another milvus.collection"
            )

    def ensure(self, model: str, dim: int, stop_words: Sequence[str]) -> None:
        """Create the collection for ``model`` if missing, else check that it matches."""
        if self.exists():
            self.check_model(model, dim)
            return
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=MAX_DOC_ID_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("chunk_count", DataType.INT64)
        schema.add_field(
            "text", DataType.VARCHAR, max_length=_MAX_TEXT_BYTES, enable_analyzer=True,
            analyzer_params={"tokenizer": "standard",
                             "filter": ["lowercase", {"type": "stop", "stop_words": list(stop_words)}]},
        )
        schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("title", DataType.VARCHAR, max_length=2048)
        schema.add_field("source", DataType.VARCHAR, max_length=4096)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("version", DataType.INT64)
        schema.add_field("origin", DataType.VARCHAR, max_length=16)
        schema.add_function(Function(name="text_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["text"], output_field_names=["sparse"]))
        index = MilvusClient.prepare_index_params()
        index.add_index("dense", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200})
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
        index.add_index("doc_id", index_type="INVERTED")
        self.client.create_collection(
            self.name, schema=schema, index_params=index, consistency_level=_CONSISTENCY,
            properties={MODEL_PROPERTY: model, DIM_PROPERTY: str(dim), SCHEMA_PROPERTY: SCHEMA},
        )

    def drop(self) -> None:
        self.client.drop_collection(self.name)

    # -- writes ------------------------------------------------------------------------------

    def upsert(self, rows: Iterable[dict[str, Any]]) -> int:
        """Upsert chunk rows in requests of at most ``max_request_bytes``. Returns rows written."""
        written = 0
        for batch in self._batches_by_bytes(rows):
            self._request("upsert", batch)
            written += len(batch)
        return written

    def _batches_by_bytes(self, rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            row = {**row, "title": _truncate_utf8(row["title"], 2048), "source": _truncate_utf8(row["source"], 4096)}
            # vector as float32 + text + metadata + a fixed allowance for the other fields
            row_bytes = 4 * len(row["dense"]) + len(row["text"].encode()) + len(json.dumps(row["metadata"])) + 512
            if batch and size + row_bytes > self.cfg.max_request_bytes:
                yield batch
                batch, size = [], 0
            batch.append(row)
            size += row_bytes
        if batch:
            yield batch

    def write_document(self, doc_id: str, rows: Sequence[dict[str, Any]], version: int) -> tuple[int, int]:
        """Write ``rows``, version ``version`` of document ``doc_id``, and settle it (``settle``),
        flushed so that the next strongly consistent search sees it. Returns (chunks written, chunks
        of older versions deleted)."""
        written = self.upsert(rows)
        deleted = self.settle([doc_id], version)
        self.flush()
        return written, deleted

    def settle(self, doc_ids: Sequence[str], version: int) -> int:
        """After ``version`` of these documents is written whole: delete their older versions, and
        where a writer has meanwhile completed a newer one, this one. Writers of one document may
        run at once on any Milvus (two Retriever replicas, an ingest): each deletes only what is
        older than itself, and a read shows one complete version of each document, so none ever
        sees a mix, and the newest stays. One paged lookup per 500 documents when there is nothing
        to delete. Returns the chunks of older versions deleted."""
        deleted = 0
        for start in range(0, len(doc_ids), _IDS_PER_FILTER):
            ids = doc_ids[start : start + _IDS_PER_FILTER]
            versions = self._versions(ids, f"version != {version}")
            older = sorted({doc for (doc, v) in versions if v < version})
            superseded = sorted({doc for (doc, v), (n, expected) in versions.items() if v > version and n == expected})
            if older:
                deleted += sum(n for (doc, v), (n, _) in versions.items() if v < version)
                self._request("delete", filter=f"doc_id in {_string_list(older)} and version < {version}")
            if superseded:
                self._request("delete", filter=f"doc_id in {_string_list(superseded)} and version == {version}")
        return deleted

    def delete_documents(self, doc_ids: Sequence[str]) -> int:
        """Delete every version of these documents written before now (a concurrent writer's newer
        version stays). Returns the number of chunks deleted."""
        version = new_version()
        return sum(self._delete_where(f"{where} and version < {version}") for where in _id_filters(doc_ids))

    def _delete_where(self, filter: str) -> int:
        found = self.count(filter)
        if found:
            self._request("delete", filter=filter)
        return found

    def flush(self) -> None:
        """Persist and index what was written (milvus-lite searches unflushed data slowly).

        milvus-lite 3.2 sometimes refuses one of two flushes that run at once ("current_seq is
        monotonic": 1 to 7 in 3,600 writes of three concurrent writers on 2 busy cores); what was
        written stays, and the flush is asked again."""
        from pymilvus.exceptions import MilvusException

        for attempt in range(1, _FLUSH_ATTEMPTS + 1):
            try:
                self._request("flush")
                return
            except MilvusException as exc:
                if attempt == _FLUSH_ATTEMPTS or _CONCURRENT_FLUSH not in str(exc):
                    raise
                time.sleep(0.05 * attempt)

    # -- reads -------------------------------------------------------------------------------

    def _versions(self, doc_ids: Sequence[str], condition: str = "") -> dict[tuple[str, int], tuple[int, int]]:
        """(document, version) → (chunks stored, chunks the version has) for the given documents'
        rows meeting ``condition``; a version is complete when the two are equal."""
        rows: dict[tuple[str, int], list[int]] = {}
        for where in _id_filters(doc_ids):
            for row in self._scan(f"{where} and {condition}" if condition else where, ["doc_id", "version", "chunk_count"]):
                seen = rows.setdefault((row["doc_id"], int(row["version"])), [0, int(row["chunk_count"])])
                seen[0] += 1
        return {key: (n, expected) for key, (n, expected) in rows.items()}

    def sources(self, doc_ids: Sequence[str]) -> dict[str, str]:
        """Map each given (stored) doc id to the source it was ingested from."""
        return {row["doc_id"]: row["source"] for row in self._rows_of_docs(doc_ids, ["doc_id", "source"])}

    def _rows_of_docs(self, doc_ids: Sequence[str], fields: list[str]) -> Iterator[dict[str, Any]]:
        for where in _id_filters(doc_ids):
            yield from self._scan(where, fields)

    def _scan(self, filter: str, fields: list[str]) -> Iterator[dict[str, Any]]:
        """Every row matching ``filter``: one query when they fit in Milvus's window of 16,384 rows
        (a query stops there), else all of them page by page."""
        rows = self._request("query", filter=filter, output_fields=fields, limit=_MAX_LIMIT,
                             consistency_level=_CONSISTENCY)
        if len(rows) < _MAX_LIMIT:
            yield from rows
            return
        iterator = self._request("query_iterator", batch_size=_PAGE_ROWS, filter=filter, output_fields=fields,
                                 consistency_level=_CONSISTENCY)
        try:
            while page := iterator.next():
                yield from page
        finally:
            iterator.close()

    def documents(self, doc_ids: Sequence[str] | None = None) -> dict[str, StoredDocument]:
        """The stored documents among ``doc_ids`` (one paged lookup per 500), or every stored
        document (None: the whole collection, scanned page by page)."""
        filters = [""] if doc_ids is None else _id_filters(doc_ids)
        seen: dict[str, dict[int, list]] = {}
        for where in filters:
            for row in self._scan(where, ["doc_id", "doc_hash", "chunk_count", "version", "origin"]):
                versions = seen.setdefault(row["doc_id"], {})
                entry = versions.setdefault(int(row["version"]),
                                            [0, int(row["chunk_count"]), row["doc_hash"], row["origin"]])
                entry[0] += 1
        out = {}
        for doc, versions in seen.items():
            rows, expected, doc_hash, origin = versions[max(versions)]
            whole = len(versions) == 1 and rows == expected
            out[doc] = StoredDocument(doc_hash if whole else None, origin)
        return out

    def newest_chunks(self) -> list[dict[str, Any]]:
        """Every chunk of each document's newest complete version (what a search shows), as
        ``{doc_id, chunk_index, text}``; the whole collection is scanned page by page."""
        versions: dict[str, dict[int, list[dict[str, Any]]]] = {}
        for row in self._scan("", ["doc_id", "chunk_index", "chunk_count", "version", "text"]):
            versions.setdefault(row["doc_id"], {}).setdefault(int(row["version"]), []).append(row)
        chunks = []
        for doc_id, found in versions.items():
            whole = [rows for rows in found.values() if len(rows) == int(rows[0]["chunk_count"])]
            if whole:
                newest = max(whole, key=lambda rows: int(rows[0]["version"]))
                chunks += [{"doc_id": doc_id, "chunk_index": int(r["chunk_index"]), "text": r["text"]} for r in newest]
        return chunks

    def count(self, filter: str = "") -> int:
        rows = self._request("query", filter=filter, output_fields=["count(*)"], consistency_level=_CONSISTENCY)
        return int(rows[0]["count(*)"])

    def get(self, ids: Sequence[str]) -> list[dict[str, Any]]:
        return self._request("get", ids=list(ids), output_fields=OUTPUT_FIELDS)

    def query(self, filter: str) -> list[dict[str, Any]]:
        """Every chunk matching ``filter`` (paged, never truncated)."""
        return list(self._scan(filter, ["id", *OUTPUT_FIELDS]))

    def search(self, vectors: Sequence[Sequence[float]] | None, texts: Sequence[str], cfg: SearchConfig,
               k: int | None = None, filter: str = "") -> list[list[SearchHit]]:
        """Search for each query; ``vectors`` may be None for ``bm25``.

        Args:
            vectors: one normalized query embedding per query (dense and hybrid).
            texts: the query strings (bm25 and hybrid).
            cfg: mode, ranker and search-breadth settings.
            k: results per query (default ``cfg.k``).
            filter: a Milvus boolean expression over the scalar fields, e.g. ``doc_id like "kb/%"``.
        """
        from pymilvus import AnnSearchRequest, RRFRanker, WeightedRanker

        k = k or cfg.k
        wanted, k = k, min(2 * k, _MAX_LIMIT)  # room for the chunks of superseded versions, dropped below
        dense_param = {"metric_type": "COSINE", "params": {"ef": max(cfg.hnsw_ef, k)}}
        common = dict(output_fields=OUTPUT_FIELDS, consistency_level=_CONSISTENCY)
        if cfg.mode == "dense":
            raw = self._request("search", data=[list(v) for v in vectors], anns_field="dense", limit=k,
                                filter=filter, search_params=dense_param, **common)
        elif cfg.mode == "bm25":
            raw = self._request("search", data=list(texts), anns_field="sparse", limit=k, filter=filter,
                                search_params={"metric_type": "BM25"}, **common)
        else:
            n = max(cfg.candidates, k)
            reqs = [
                AnnSearchRequest([list(v) for v in vectors], "dense", dense_param, n, filter=filter or None),
                AnnSearchRequest(list(texts), "sparse", {"metric_type": "BM25"}, n, filter=filter or None),
            ]
            ranker = RRFRanker(cfg.rrf_k) if cfg.ranker == "rrf" else WeightedRanker(*cfg.weights)
            raw = self._request("hybrid_search", reqs, ranker=ranker, limit=k, **common)
        results = [[_hit(h) for h in hits] for hits in raw]
        shown = self._shown_versions({(h.doc_id, h.version) for hits in results for h in hits})
        return [[h for h in hits if shown.get(h.doc_id) == h.version][:wanted] for hits in results]

    def _shown_versions(self, hit: set[tuple[str, int]]) -> dict[str, int]:
        """The one version of each hit document a read shows: the newest complete one among the
        versions hit (an incomplete one is being written, or was left by an interrupted run).
        Completeness is looked up once per (document, version) and then remembered — a whole
        version stays whole until it is deleted, and then it is no longer hit — so a search of
        settled documents makes no query beyond the search itself. Between a writer completing a
        version and deleting the older one, a read that hits only the older one shows it, whole."""
        unknown = sorted({doc for doc, version in hit if (doc, version) not in self._complete})
        if unknown:
            for key, (n, expected) in self._versions(unknown).items():
                if n == expected:
                    self._complete[key] = None
                    self._complete.move_to_end(key)
            while len(self._complete) > _REMEMBERED_VERSIONS:
                self._complete.popitem(last=False)
        shown: dict[str, int] = {}
        for doc, version in hit:
            if (doc, version) in self._complete:
                self._complete.move_to_end((doc, version))
                shown[doc] = max(version, shown.get(doc, -1))
        return shown


def _hit(h: dict[str, Any]) -> SearchHit:
    e = h["entity"]
    return SearchHit(id=h["id"], doc_id=e["doc_id"], chunk_index=int(e["chunk_index"]), score=float(h["distance"]),
                     text=e["text"], title=e["title"], source=e["source"], metadata=e.get("metadata") or {},
                     version=int(e["version"]))
