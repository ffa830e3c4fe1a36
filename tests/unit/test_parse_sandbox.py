"""Files parsed in a child process under a time and a memory limit (ingest/sandbox.py)."""

import time

from ragtune.core.documents import RejectReason
from ragtune.ingest.parsers import ParseOptions
from ragtune.ingest.sandbox import ParseSandbox
from ragtune.ingest.sources import FileEntry
from tests.pdfs import HELLO, inflating_pdf, one_page_pdf, slow_pdf

ENTRY = FileEntry("/corpus/file.pdf", "file.pdf", 0)


def test_a_pdf_past_the_time_limit_is_rejected_and_the_next_file_parses():
    sandbox = ParseSandbox(timeout_s=1.0, memory_mb=512)
    try:
        started = time.monotonic()
        docs, [rejected] = sandbox.parse(ENTRY, slow_pdf(), ParseOptions(10**8))
        assert time.monotonic() - started < 3  # ~5 s to parse; stopped at its limit
        assert not docs and rejected.reason == RejectReason.PARSE_TIMEOUT
        assert rejected.detail == "parsing took longer than validation.parse_timeout_s=1"
        [doc], [] = sandbox.parse(ENTRY, one_page_pdf(HELLO), ParseOptions(10**8))  # a new child
        assert doc.text == "hello world" and doc.doc_id == "file.pdf"
    finally:
        sandbox.close()


def test_a_pdf_that_inflates_past_the_memory_limit_is_rejected_too_large():
    sandbox = ParseSandbox(timeout_s=30.0, memory_mb=256)
    try:
        docs, [rejected] = sandbox.parse(ENTRY, inflating_pdf(), ParseOptions(10**8))
        assert not docs and rejected.reason == RejectReason.TOO_LARGE
        assert rejected.detail == "parsing needed more than validation.parse_memory_mb=256"
        [doc], [] = sandbox.parse(ENTRY, one_page_pdf(HELLO), ParseOptions(10**8))
        assert doc.text == "hello world"
    finally:
        sandbox.close()
