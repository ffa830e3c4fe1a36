import json

from ragtune.core.documents import RejectReason, chunk_id
from ragtune.ingest.parsers import ParseOptions, parse_file
from ragtune.ingest.sources import FileEntry
from tests.conftest import KB_DIR

LIMIT = 1_000_000


def parse(name, data):
    return parse_file(FileEntry(f"/src/{name}", name, len(data)), data, ParseOptions(LIMIT))


def reason(name, data):
    docs, rejects = parse(name, data)
    assert not docs and len(rejects) == 1
    return rejects[0].reason


def test_bad_bytes_are_classified():
    assert reason("a.txt", b"") == RejectReason.EMPTY
    assert reason("a.txt", b"\x89PNG\r\n\x1a\n" + bytes(range(256))) == RejectReason.BINARY
    assert reason("a.txt", b"hello\x00world") == RejectReason.BINARY
    assert reason("a.txt", b"caf\xe9 au lait") == RejectReason.UNDECODABLE
    assert reason("a.txt", b"x" * (LIMIT + 1)) == RejectReason.TOO_LARGE
    assert reason("a.txt", b"   \n\n  ") == RejectReason.NO_TEXT
    assert reason("a.pdf", b"not a pdf at all") == RejectReason.PARSE_ERROR
    assert reason("a.xyz", b"text") == RejectReason.PARSE_ERROR
    assert reason("a.json", b'{"not": "squad"}') == RejectReason.PARSE_ERROR


def test_html_drops_script_and_keeps_headings():
    html = (b"<html><head><title>T</title><script>var secret='CANARY';</script><style>p{}</style></head>"
            b"<body><h1>Head</h1><p>Body text.</p><script>alert('CANARY2')</script></body></html>")
    docs, rejects = parse("p.html", html)
    assert not rejects and docs[0].title == "T"
    assert "CANARY" not in docs[0].text and "# Head" in docs[0].text and "Body text." in docs[0].text


def test_pdf_text_and_title():
    data = (KB_DIR / "policies" / "warranty.pdf").read_bytes()
    docs, _ = parse("policies/warranty.pdf", data)
    assert docs[0].title == "Warranty" and "2-year warranty" in docs[0].text


def test_jsonl_records_and_bad_lines():
    data = "\n".join([
        json.dumps({"_id": "d1", "title": "T1", "text": "one"}),
        "{broken",
        json.dumps({"id": "d2", "text": ""}),
        json.dumps({"text": "no id"}),
        json.dumps({"title": "no text"}),
    ]).encode()
    docs, rejects = parse("c.jsonl", data)
    assert [d.doc_id for d in docs] == ["d1", "c.jsonl:4"] and docs[0].title == "T1"
    assert sorted(r.reason.value for r in rejects) == ["no_text", "parse_error", "parse_error"]
    assert rejects[0].source.endswith("c.jsonl:2")


def test_squad_paragraphs_become_documents():
    squad = {"data": [{"title": "Super_Bowl_50", "paragraphs": [{"context": "A", "qas": []},
                                                               {"context": "B", "qas": []}]}]}
    docs, _ = parse("dev.json", json.dumps(squad).encode())
    assert [d.doc_id for d in docs] == ["Super_Bowl_50#0", "Super_Bowl_50#1"] and docs[0].title == "Super Bowl 50"


def test_ids_and_hashes_are_stable_and_content_addressed():
    a, _ = parse("a.md", b"# Title\n\nBody")
    b, _ = parse("a.md", b"# Title\n\nBody")
    c, _ = parse("a.md", b"# Title\n\nBody changed")
    assert a[0].doc_id == c[0].doc_id == "a.md"
    assert a[0].content_hash == b[0].content_hash != c[0].content_hash
    assert chunk_id("a", 0, "t", "m", 1) == chunk_id("a", 0, "t", "m", 1) != chunk_id("a", 0, "t", "other-model", 1)
    assert chunk_id("a", 0, "t", "m", 1) != chunk_id("a", 0, "t", "m", 2)  # versions never share a row
