"""Classify raw input bytes before parsing: empty, binary, undecodable or too large."""

from __future__ import annotations

from ragtune.core.documents import RejectReason

# A file is binary when it holds a NUL byte or when more than this share of its first
# sniffed bytes are control characters other than tab, newline, carriage return and form feed.
_CONTROL_FRACTION = 0.10
_SNIFF_BYTES = 8192
_ALLOWED_CONTROL = {9, 10, 12, 13, 27}


def classify_bytes(data: bytes, max_bytes: int) -> tuple[RejectReason | None, str]:
    """Return ``(reason, detail)`` for unusable bytes, or ``(None, "")`` when they may be text."""
    if len(data) == 0:
        return RejectReason.EMPTY, "0 bytes"
    if len(data) > max_bytes:
        return RejectReason.TOO_LARGE, f"{len(data)} bytes > limit {max_bytes}"
    if b"\x00" in data:
        return RejectReason.BINARY, f"NUL byte at offset {data.index(0)}"
    head = data[:_SNIFF_BYTES]
    control = sum(1 for b in head if b < 32 and b not in _ALLOWED_CONTROL)
    if control > _CONTROL_FRACTION * len(head):
        return RejectReason.BINARY, f"{control} control bytes in the first {len(head)}"
    return None, ""


def decode_text(data: bytes) -> tuple[str | None, str]:
    """Decode UTF-8 (a BOM is allowed); returns ``(None, detail)`` when the bytes are not UTF-8."""
    try:
        return data.decode("utf-8-sig"), ""
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}: {exc.reason}"
