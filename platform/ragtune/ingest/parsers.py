"""Turn one file's bytes into documents (or rejections with a reason code), by format."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import PurePosixPath

from ragtune.core.documents import Document, Rejection, RejectReason
from ragtune.core.validation import classify_bytes, decode_text
from ragtune.ingest.sources import FileEntry

Parsed = tuple[list[Document], list[Rejection]]

_HTML_DROP = ["script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "head"]
_BLANKS = re.compile(r"\n\s*\n\s*\n+")


def parse_file(entry: FileEntry, data: bytes, max_bytes: int) -> Parsed:
    """Validate and parse one file; never raises for bad content."""
    suffix = PurePosixPath(entry.rel).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        supported = ", ".join(sorted(PARSERS))
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, f"unsupported file type {suffix or '(none)'!r}; supported: {supported}")]
    binary_format = suffix == ".pdf" and 0 < len(data) <= max_bytes  # only size and emptiness apply
    reason, detail = (None, "") if binary_format else classify_bytes(data, max_bytes)
    if reason is not None:
        return [], [Rejection(entry.uri, reason, detail, entry.rel)]
    try:
        return parser(entry, data)
    except MemoryError:
        raise  # the sandbox's memory limit (ingest/sandbox.py): too_large, not a parse error
    except Exception as exc:  # a parser bug or a malformed file must not stop the job
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, f"{type(exc).__name__}: {exc}", entry.rel)]


def _decode(entry: FileEntry, data: bytes) -> str | Rejection:
    text, detail = decode_text(data)
    return Rejection(entry.uri, RejectReason.UNDECODABLE, detail, entry.rel) if text is None else text


def _single(entry: FileEntry, text: str, title: str) -> Parsed:
    if not text.strip():
        return [], [Rejection(entry.uri, RejectReason.NO_TEXT, "no text after parsing", entry.rel)]
    return [Document(entry.rel, text.strip(), title=title.strip(), source=entry.uri)], []


def _stem_title(entry: FileEntry) -> str:
    return PurePosixPath(entry.rel).stem.replace("_", " ").replace("-", " ")


def parse_text(entry: FileEntry, data: bytes) -> Parsed:
    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return _single(entry, text, heading.group(1) if heading else _stem_title(entry))


def parse_html(entry: FileEntry, data: bytes) -> Parsed:
    from bs4 import BeautifulSoup

    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    soup = BeautifulSoup(text, "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else ""
    for tag in soup(_HTML_DROP):
        tag.decompose()  # script and style text is never indexed
    for level in range(1, 7):  # keep headings as markdown so chunking can follow sections
        for h in soup.find_all(f"h{level}"):
            h.replace_with(f"\n\n{'#' * level} {h.get_text(' ', strip=True)}\n\n")
    for tag in soup.find_all(["p", "li", "tr", "br", "div"]):
        tag.insert_after("\n")
    body = _BLANKS.sub("\n\n", "\n".join(line.strip() for line in soup.get_text().splitlines()))
    return _single(entry, body, title or _stem_title(entry))


def parse_pdf(entry: FileEntry, data: bytes) -> Parsed:
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "not a PDF (missing %PDF- header)")]
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "encrypted PDF")]
    text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    meta_title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    return _single(entry, text, str(meta_title) if meta_title else _stem_title(entry))


def parse_jsonl(entry: FileEntry, data: bytes) -> Parsed:
    """One document per line: BEIR corpus records (``_id``, ``title``, ``text``) or any object
    with a ``text`` field and optionally ``id``/``doc_id``, ``title`` and ``metadata``."""
    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    docs, rejects = [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{entry.uri}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            rejects.append(Rejection(where, RejectReason.PARSE_ERROR, f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            rejects.append(Rejection(where, RejectReason.PARSE_ERROR, "record has no string field 'text'"))
            continue
        doc_id = str(record.get("_id") or record.get("doc_id") or record.get("id") or f"{entry.rel}:{lineno}")
        body = record["text"].strip()
        if not body:
            rejects.append(Rejection(where, RejectReason.NO_TEXT, "empty 'text'", doc_id))
            continue
        metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
        docs.append(Document(doc_id, body, title=str(record.get("title") or ""), source=where, metadata=metadata))
    return docs, rejects


def parse_squad(entry: FileEntry, data: bytes) -> Parsed:
    """SQuAD v1/v2 json: one document per paragraph, id ``<title>#<paragraph index>``."""
    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    root = json.loads(text)
    if not isinstance(root, dict) or not isinstance(root.get("data"), list):
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "json must be SQuAD format (a top-level 'data' list)")]
    docs = []
    for article in root["data"]:
        title = article["title"]
        for i, paragraph in enumerate(article["paragraphs"]):
            docs.append(Document(f"{title}#{i}", paragraph["context"].strip(), title=title.replace("_", " "),
                                 source=f"{entry.uri}#{title}", metadata={"article": title, "paragraph": i}))
    return docs, []


PARSERS: dict[str, Callable[[FileEntry, bytes], Parsed]] = {
    ".txt": parse_text, ".md": parse_text, ".markdown": parse_text,
    ".html": parse_html, ".htm": parse_html,
    ".pdf": parse_pdf,
    ".jsonl": parse_jsonl,
    ".json": parse_squad,
}
