"""A document into the rows of the index: chunks led by the title, and the stored row of each
chunk. Shared by the ingest pipeline (in bulk) and the serving documents API (one at a time)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ragtune.config import RagtuneConfig
from ragtune.core.chunking import ChunkLimits, chunk_text
from ragtune.core.documents import Document, RejectReason, chunk_id
from ragtune.embedding import TokenCounter, encoder_info

# Characters per chunk, whatever the tokenizer says: bounds unbroken strings that tokenize to
# one unknown token and keeps every chunk far below Milvus's 65,535-byte VARCHAR limit.
MAX_CHUNK_CHARS = 4000


@lru_cache(maxsize=2)
def _token_counter(model_ref: str) -> TokenCounter:
    return TokenCounter(encoder_info(model_ref).model)


def chunk_document(doc: Document, config: RagtuneConfig, max_model_tokens: int) -> list[str]:
    """Chunks of ``doc``, each led by the document title so both BM25 and the encoder see it."""
    counter = _token_counter(config.embedding.model)
    budget = min(config.chunking.max_tokens, max_model_tokens)
    header = f"{doc.title}\n\n" if doc.title and not doc.text.lstrip("# ").startswith(doc.title) else ""
    if header and (len(counter.spans(header)) > budget // 4 or len(header) > MAX_CHUNK_CHARS // 4):
        header = ""  # a very long title would crowd out the text; it stays in the title field
    max_tokens = budget - len(counter.spans(header))
    limits = ChunkLimits(max_tokens=max_tokens, overlap_tokens=min(config.chunking.overlap_tokens, max_tokens // 2),
                         max_chars=MAX_CHUNK_CHARS - len(header), markdown_sections=config.chunking.markdown_sections)
    return [header + piece for piece in chunk_text(doc.text, counter.spans, limits)]


def too_long(doc: Document, config: RagtuneConfig) -> str | None:
    """Why ``doc`` is too long to index (``validation.max_document_chars``), or None."""
    limit = config.validation.max_document_chars
    return f"{len(doc.text)} characters of text; the limit is validation.max_document_chars={limit}" \
        if len(doc.text) > limit else None


def unindexable(pieces: list[str], config: RagtuneConfig) -> tuple[RejectReason, str] | None:
    """Why a document chunked into ``pieces`` cannot be stored — no chunk, or more than
    ``chunking.max_chunks_per_document`` — or None."""
    if not pieces:
        return RejectReason.NO_TEXT, "no chunk after chunking"
    limit = config.chunking.max_chunks_per_document
    return (RejectReason.TOO_LARGE, f"{len(pieces)} chunks; the limit is chunking.max_chunks_per_document={limit}") \
        if len(pieces) > limit else None


def chunk_row(*, doc_id: str, chunk_index: int, chunk_count: int, text: str, dense: list[float], title: str,
              source: str, doc_hash: str, metadata: dict[str, Any], model_name: str, version: int,
              origin: str) -> dict[str, Any]:
    """The stored row of one chunk of version ``version`` of its document, written by ``origin``
    (``ingest`` or ``api``); versions never share a row, so one is never overwritten by another."""
    return {"id": chunk_id(doc_id, chunk_index, text, model_name, version), "doc_id": doc_id,
            "chunk_index": chunk_index, "chunk_count": chunk_count, "text": text, "dense": dense, "title": title,
            "source": source, "doc_hash": doc_hash, "metadata": metadata, "version": version, "origin": origin}
