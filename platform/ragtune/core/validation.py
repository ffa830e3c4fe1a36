"""Classify raw input bytes before parsing: empty, binary, undecodable or too large."""

from __future__ import annotations

from ragtune.core.documents import RejectReason

_SNIFF_BYTES = 8192
_ALLOWED_CONTROL = {9, 10, 12, 13, 27}
# Binary when more than this share of the sniffed bytes are control characters ...
_CONTROL_FRACTION = 0.05
# ... or when the bytes are not UTF-8 and more than this share has the high bit set (text in a
# legacy encoding has a few accented letters; compressed or image data is about half high bytes).
_HIGH_FRACTION = 0.30


def classify_bytes(data: bytes, max_bytes: int) -> tuple[RejectReason | None, str]:
    """Return ``(reason, detail)`` for unusable bytes, or ``(None, "")`` when they may be text."""
    if len(data) == 0:
        return RejectReason.EMPTY, "0 bytes"
    if len(data) > max_bytes:
        return RejectReason.TOO_LARGE, f"more than {max_bytes} bytes (validation.max_file_bytes)"
    if b"\x00" in data:
        return RejectReason.BINARY, f"NUL byte at offset {data.index(0)}"
    head = data[:_SNIFF_BYTES]
    control = sum(1 for b in head if (b < 32 and b not in _ALLOWED_CONTROL) or b == 127)
    if control > _CONTROL_FRACTION * len(head):
        return RejectReason.BINARY, f"{control} control bytes in the first {len(head)}"
    high = sum(1 for b in head if b >= 128)
    if high > _HIGH_FRACTION * len(head) and decode_text(data)[0] is None:
        return RejectReason.BINARY, f"not UTF-8 and {high} of the first {len(head)} bytes are non-ASCII"
    return None, ""


def decode_text(data: bytes) -> tuple[str | None, str]:
    """Decode UTF-8 (a BOM is allowed); returns ``(None, detail)`` when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"
