"""PDFs built byte by byte for tests: one page whose content stream the test chooses."""

import zlib

HELLO = b"BT /F1 12 Tf 72 712 Td (hello world) Tj ET\n"


def one_page_pdf(content: bytes) -> bytes:
    """A valid one-page PDF whose page content stream is ``content``, Flate-compressed."""
    stream = zlib.compress(content, 9)
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Filter /FlateDecode /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def slow_pdf() -> bytes:
    """30 KB that take pypdf about 5 s to extract (100,000 text operators)."""
    return one_page_pdf(HELLO * 100_000)


def inflating_pdf() -> bytes:
    """70 KB whose content stream inflates to 70 MB (one string operand)."""
    return one_page_pdf(b"(" + b"A" * (70 * 2**20) + b") Tj\n")
