"""Milvus: collection schema and lifecycle, writes, deletes and dense / BM25 / hybrid search."""

from ragtune.store.collection import CollectionMismatch, SearchHit, VectorStore
from ragtune.store.local import LocalMilvusError, connect_uri

__all__ = ["CollectionMismatch", "LocalMilvusError", "SearchHit", "VectorStore", "connect_uri"]
