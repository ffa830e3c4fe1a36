"""Turn one file's bytes into documents (or rejections with a reason code), by format."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

from ragtune.core.documents import Document, Rejection, RejectReason
from ragtune.core.validation import classify_bytes, decode_text
from ragtune.ingest.sources import FileEntry

Parsed = tuple[list[Document], list[Rejection]]

_HTML_DROP = ["script", "style", "noscript", "template", "iframe", "object", "embed", "svg", "head"]
_BLANKS = re.compile(r"\n\s*\n\s*\n+")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_NOTES = re.compile(r"^### Notes:$", re.MULTILINE)  # a slide's speaker notes stay in its section
# Formats that are binary containers: only size and emptiness are checked before parsing.
_BINARY_FORMATS = {".pdf", ".docx", ".pptx", ".xlsx", ".epub"}


@dataclass(frozen=True)
class ParseOptions:
    """What parsing takes from the config (``validation.max_file_bytes``, ``ingest.notebook_outputs``,
    ``ingest.table_documents``)."""

    max_bytes: int
    notebook_outputs: bool = False
    table_documents: str = "sheet"


def parse_file(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    """Validate and parse one file; never raises for bad content."""
    suffix = PurePosixPath(entry.rel).suffix.lower()
    parser = PARSERS.get(suffix)
    if parser is None:
        supported = ", ".join(sorted(PARSERS))
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, f"unsupported file type {suffix or '(none)'!r}; supported: {supported}")]
    binary_format = suffix in _BINARY_FORMATS and 0 < len(data) <= options.max_bytes
    reason, detail = (None, "") if binary_format else classify_bytes(data, options.max_bytes)
    if reason is not None:
        return [], [Rejection(entry.uri, reason, detail, entry.rel)]
    if suffix in _BINARY_FORMATS - {".pdf"} and not zipfile.is_zipfile(io.BytesIO(data)):
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, f"not a {suffix} file (not a zip container)",
                              entry.rel)]
    try:
        return parser(entry, data, options)
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


def parse_text(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    if PurePosixPath(entry.rel).suffix.lower() in (".md", ".markdown"):
        text = _plain_myst(text)
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    return _single(entry, text, heading.group(1) if heading else _stem_title(entry))


_MYST_LABEL = re.compile(r"^\(([\w.:-]+)\)=[ \t]*\n", re.MULTILINE)
_MYST_BLOCK = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[\w:.-]+)\}[ \t]*(?P<args>[^\n]*)\n(?P<body>.*?)"
                         r"^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
_MYST_OPTION = re.compile(r"\A(?:[ \t]*:[\w-]+:[^\n]*\n)+")
_MYST_ROLE = re.compile(r"\{[\w:.-]+\}`(?P<text>[^`]*)`")
_MYST_CODE = {"code-block", "code-cell", "code", "sourcecode"}


def _plain_myst(text: str) -> str:
    """MyST Markdown (Sphinx's Markdown) as its readers see it: ``(label)=`` targets dropped, a
    directive block as its arguments and content (code directives stay code), a role as its text."""
    def block(match: re.Match) -> str:
        body = _MYST_OPTION.sub("", match.group("body"))
        if match.group("name") in _MYST_CODE:
            return f"```{match.group('args')}\n{body}```"
        return "\n".join(part for part in (match.group("args").strip(), body.rstrip()) if part)

    def role(match: re.Match) -> str:
        inner = match.group("text")
        return re.sub(r"\s*<[^<>]*>$", "", inner).lstrip("~!") or inner

    text = _MYST_LABEL.sub("", text)
    for _ in range(8):  # a block inside a block: one level per pass
        text, found = _MYST_BLOCK.subn(block, text)
        if not found:
            break
    return _MYST_ROLE.sub(role, text)


def parse_html(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
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


def parse_pdf(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    from pypdf import PdfReader

    if not data.startswith(b"%PDF-"):
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "not a PDF (missing %PDF- header)")]
    reader = PdfReader(io.BytesIO(data))
    if reader.is_encrypted:
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "encrypted PDF")]
    text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    meta_title = (reader.metadata or {}).get("/Title") if reader.metadata else None
    return _single(entry, text, str(meta_title) if meta_title else _stem_title(entry))


def parse_jsonl(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
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


def parse_squad(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
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


def parse_rst(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    """reStructuredText (Sphinx's roles and directives as their text: ``ragtune.ingest.rst``)."""
    from ragtune.ingest.rst import rst_to_markdown

    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    title, body = rst_to_markdown(text)
    return _single(entry, body, title or _stem_title(entry))


def parse_notebook(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    """A Jupyter notebook (nbformat 4): markdown cells as they are, code cells fenced in the kernel's
    language, with ``ingest.notebook_outputs`` their text outputs too. (markitdown's converter
    drops outputs, and the format is JSON: read here.)"""
    text = _decode(entry, data)
    if isinstance(text, Rejection):
        return [], [text]
    notebook = json.loads(text)
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        return [], [Rejection(entry.uri, RejectReason.PARSE_ERROR, "not a Jupyter notebook (no 'cells' list)", entry.rel)]
    metadata = notebook.get("metadata") or {}
    language = (metadata.get("kernelspec") or {}).get("language") or (metadata.get("language_info") or {}).get("name", "")
    blocks = []
    for cell in notebook["cells"]:
        source = _joined(cell.get("source")).strip()
        if cell.get("cell_type") == "markdown" and source:
            blocks.append(source)
        elif cell.get("cell_type") == "code":
            if source:
                blocks.append(f"```{language}\n{source}\n```")
            if options.notebook_outputs:
                blocks.extend(f"```\n{out}\n```" for out in _outputs(cell.get("outputs") or []) if out)
    body = "\n\n".join(blocks)
    heading = re.search(r"^#\s+(.+)$", body, re.MULTILINE)
    return _single(entry, body, heading.group(1) if heading else _stem_title(entry))


def _joined(source) -> str:
    return "".join(source) if isinstance(source, list) else str(source or "")


def _outputs(outputs: list) -> Iterable[str]:
    """The text of a code cell's outputs: streams, and text/plain results (no images or HTML)."""
    for out in outputs:
        if out.get("output_type") == "stream":
            yield _joined(out.get("text")).strip()
        elif out.get("output_type") in ("execute_result", "display_data"):
            yield _joined((out.get("data") or {}).get("text/plain")).strip()


def parse_office(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    """docx, pptx and EPUB through markitdown's converters (headings kept as Markdown; a slide's
    title heads its section; speaker notes kept; EPUB scripts dropped)."""
    from markitdown import StreamInfo
    from markitdown.converters import DocxConverter, EpubConverter, PptxConverter

    suffix = PurePosixPath(entry.rel).suffix.lower()
    converter = {".docx": DocxConverter, ".pptx": PptxConverter, ".epub": EpubConverter}[suffix]()
    result = converter.convert(io.BytesIO(data), StreamInfo(extension=suffix))
    body = _BLANKS.sub("\n\n", _NOTES.sub("Notes:", _COMMENT.sub("", result.markdown or "")))
    heading = re.search(r"^#{1,6}\s+(.+)$", body, re.MULTILINE)
    title = result.title or _core_title(data) or (heading.group(1) if heading else "") or _stem_title(entry)
    return _single(entry, body, title)


def _core_title(data: bytes) -> str:
    """The title in an Office file's document properties (docProps/core.xml), or ""."""
    from defusedxml import ElementTree

    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        if "docProps/core.xml" not in archive.namelist():
            return ""
        root = ElementTree.fromstring(archive.read("docProps/core.xml"))
    title = root.find("{http://purl.org/dc/elements/1.1/}title")
    return (title.text or "").strip() if title is not None else ""


def parse_table(entry: FileEntry, data: bytes, options: ParseOptions) -> Parsed:
    """csv and xlsx: the first row names the columns; each row becomes ``column: value`` lines.
    ``ingest.table_documents``: one document per sheet (id: the file, or ``<file>#<sheet>`` in a
    workbook of several), or one per row (``<file>#<row>``, in a workbook ``<file>#<sheet>:<row>``; rows
    counted from 2, as a spreadsheet shows them)."""
    if PurePosixPath(entry.rel).suffix.lower() == ".csv":
        text = _decode(entry, data)
        if isinstance(text, Rejection):
            return [], [text]
        sheets = [("", list(csv.reader(io.StringIO(text))))]
    else:
        from openpyxl import load_workbook

        book = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        sheets = [(sheet.title, [["" if v is None else str(v) for v in row] for row in sheet.iter_rows(values_only=True)])
                  for sheet in book.worksheets]
        book.close()
    docs: list[Document] = []
    title = _stem_title(entry)
    for name, rows in sheets:
        rows = [r for r in rows if any(cell.strip() for cell in r)]
        if not rows:
            continue
        header, records = [h.strip() or f"column {i + 1}" for i, h in enumerate(rows[0])], rows[1:]
        lines = ["\n".join(f"{header[i] if i < len(header) else f'column {i + 1}'}: {v.strip()}"
                           for i, v in enumerate(r) if v.strip()) for r in records]
        sheet_id = entry.rel if len(sheets) == 1 else f"{entry.rel}#{name}"
        sheet_title = f"{title} — {name}" if name and len(sheets) > 1 else title
        if options.table_documents == "row":
            docs.extend(Document(f"{entry.rel}#{name + ':' if name else ''}{n}", line, title=f"{sheet_title}, row {n}",
                                 source=entry.uri, metadata={"sheet": name, "row": n})
                        for n, line in enumerate(lines, start=2) if line)
        elif any(lines):
            docs.append(Document(sheet_id, "\n\n".join(line for line in lines if line), title=sheet_title,
                                 source=entry.uri, metadata={"sheet": name} if name else {}))
    if not docs:
        return [], [Rejection(entry.uri, RejectReason.NO_TEXT, "no rows with text after the header row", entry.rel)]
    return docs, []


PARSERS: dict[str, Callable[[FileEntry, bytes, ParseOptions], Parsed]] = {
    ".txt": parse_text, ".md": parse_text, ".markdown": parse_text,
    ".html": parse_html, ".htm": parse_html,
    ".pdf": parse_pdf,
    ".jsonl": parse_jsonl,
    ".json": parse_squad,
    ".rst": parse_rst, ".rest": parse_rst,
    ".ipynb": parse_notebook,
    ".docx": parse_office, ".pptx": parse_office, ".epub": parse_office,
    ".csv": parse_table, ".xlsx": parse_table,
}
