"""Token-aware, markdown-section-aware chunking with overlap and a hard maximum length.

The tokenizer is passed in as a function returning the character span of every token, so this
module stays pure and chunks are measured in the embedding model's own tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

TokenSpans = Callable[[str], Sequence[tuple[int, int]]]

_HEADING = re.compile(r"^#{1,6}\s+\S", re.MULTILINE)
# Ends that make a good place to cut a window: sentence punctuation or a line break.
_GOOD_END = re.compile(r"[.!?;:]['\")\]]?$|\n")


@dataclass(frozen=True)
class ChunkLimits:
    """``max_tokens`` and ``max_chars`` are hard limits; ``overlap_tokens`` repeats context."""

    max_tokens: int
    overlap_tokens: int
    max_chars: int
    markdown_sections: bool = True

    def __post_init__(self) -> None:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError(
                f"chunking.overlap_tokens ({self.overlap_tokens}) must be smaller than "
                f"chunking.max_tokens ({self.max_tokens})"
            )


def markdown_sections(text: str) -> list[str]:
    """Split at markdown headings; each section keeps its heading line."""
    starts = [m.start() for m in _HEADING.finditer(text)]
    if not starts or starts[0] != 0:
        starts.insert(0, 0)
    bounds = starts + [len(text)]
    return [s for a, b in zip(bounds, bounds[1:]) if (s := text[a:b].strip())]


def chunk_text(text: str, tokenize: TokenSpans, limits: ChunkLimits) -> list[str]:
    """Split ``text`` into chunks of at most ``limits.max_tokens`` tokens and ``max_chars`` chars.

    Whole markdown sections are packed together while they fit; a section that does not fit is
    cut into overlapping token windows that end at a sentence or line break when one is near.
    """
    sections = markdown_sections(text) if limits.markdown_sections else [text.strip()]
    chunks: list[str] = []
    pending: list[str] = []
    pending_tokens = 0
    for section in sections:
        spans = list(tokenize(section))
        fits = len(spans) <= limits.max_tokens and len(section) <= limits.max_chars
        if fits and pending and pending_tokens + len(spans) <= limits.max_tokens and (
            sum(map(len, pending)) + len(section) + 2 * len(pending) <= limits.max_chars
        ):
            pending.append(section)
            pending_tokens += len(spans)
            continue
        if pending:
            chunks.append("\n\n".join(pending))
            pending, pending_tokens = [], 0
        if fits:
            pending, pending_tokens = [section], len(spans)
        else:
            chunks.extend(_windows(section, spans, limits))
    if pending:
        chunks.append("\n\n".join(pending))
    return [c for c in chunks if c.strip()]


def _windows(text: str, spans: Sequence[tuple[int, int]], limits: ChunkLimits) -> list[str]:
    """Overlapping token windows over one oversized section."""
    out: list[str] = []
    n = len(spans)
    start = 0
    while start < n:
        end = min(start + limits.max_tokens, n)
        # Respect the character limit too (long tokens, e.g. URLs or unbroken strings).
        while end > start + 1 and spans[end - 1][1] - spans[start][0] > limits.max_chars:
            end -= 1
        if end < n:
            end = _nice_end(text, spans, start, end)
        piece_start, piece_end = spans[start][0], spans[end - 1][1]
        if piece_end - piece_start > limits.max_chars:  # one token longer than max_chars
            out.extend(text[i : i + limits.max_chars] for i in range(piece_start, piece_end, limits.max_chars))
        else:
            out.append(text[piece_start:piece_end].strip())
        if end >= n:
            break
        # overlap never exceeds half the window: windows cut short by max_chars (long tokens) would
        # otherwise advance a token at a time and repeat the text many times over
        start = max(end - limits.overlap_tokens, start + max(1, (end - start + 1) // 2))
    return out


def _nice_end(text: str, spans: Sequence[tuple[int, int]], start: int, end: int) -> int:
    """Move ``end`` back to just after a sentence end or line break in the window's last half."""
    floor = start + max(1, (end - start) // 2)
    for i in range(end, floor, -1):
        tail = text[spans[i - 1][0] : spans[i][0] if i < len(spans) else spans[i - 1][1] + 1]
        if _GOOD_END.search(tail.rstrip(" \t")) or "\n" in tail:
            return i
    return end
