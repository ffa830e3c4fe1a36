"""Documents, their stable ids and content hashes, and rejection reasons."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from enum import Enum
from typing import Any


class RejectReason(str, Enum):
    """Why an input never became chunks. Values are the codes written to the reject report."""

    EMPTY = "empty"
    BINARY = "binary"
    UNDECODABLE = "undecodable"
    TOO_LARGE = "too_large"
    NO_TEXT = "no_text"
    PARSE_ERROR = "parse_error"
    PARSE_TIMEOUT = "parse_timeout"
    DUPLICATE_ID = "duplicate_id"
    ID_TOO_LONG = "id_too_long"


# The longest document id the collection's schema stores (its VARCHAR limit, in UTF-8 bytes)
MAX_DOC_ID_BYTES = 1024


def id_too_long(doc_id: str) -> str | None:
    """Why ``doc_id`` cannot be stored, or None."""
    size = len(doc_id.encode("utf-8", errors="surrogatepass"))
    return f"document id is {size} bytes (UTF-8); the limit is {MAX_DOC_ID_BYTES}" if size > MAX_DOC_ID_BYTES else None


@dataclass(frozen=True)
class Document:
    """One logical document: a file, a corpus record or a SQuAD paragraph.

    ``doc_id`` is stable across runs (derived from the source path or the record's own id),
    so a changed document replaces its previous chunks instead of adding new ones.
    """

    doc_id: str
    text: str
    title: str = ""
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def content_hash(self) -> str:
        """sha256 over everything that ends up in the index (text, title, metadata)."""
        payload = json.dumps([self.title, self.text, self.metadata], sort_keys=True, ensure_ascii=False)
        return sha256_hex(payload)


@dataclass(frozen=True)
class Rejection:
    """An input that was classified as unusable; it writes nothing to the store."""

    source: str
    reason: RejectReason
    detail: str
    doc_id: str = ""


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def chunk_id(doc_id: str, chunk_index: int, text: str, embedding_model: str, version: int) -> str:
    """The primary key of a chunk of one write version of its document: writing it again is an
    idempotent upsert, and another version, document, chunking or model gives other ids."""
    return sha256_hex("\x1f".join([doc_id, str(chunk_index), embedding_model, text, str(version)]))
