import re

import pytest

from ragtune.core.chunking import ChunkLimits, chunk_text, markdown_sections


def words(text):
    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def test_markdown_sections_keep_headings():
    text = "intro\n# A\nalpha\n## B\nbeta"
    assert markdown_sections(text) == ["intro", "# A\nalpha", "## B\nbeta"]


def test_small_sections_are_packed_and_big_ones_split_with_overlap():
    body = " ".join(f"w{i}." for i in range(100))
    text = f"# One\nshort one\n# Two\nshort two\n# Three\n{body}"
    chunks = chunk_text(text, words, ChunkLimits(max_tokens=30, overlap_tokens=5, max_chars=10_000))
    assert chunks[0] == "# One\nshort one\n\n# Two\nshort two"
    big = chunks[1:]
    assert all(len(words(c)) <= 30 for c in big)
    # consecutive windows share their overlap
    first, second = words(big[0]), words(big[1])
    assert big[0][first[-5][0]:] == big[1][: second[4][1]]
    # nothing lost: every word of the body appears in some chunk
    assert {w for c in big for w in c.split()} >= set(body.split())


def test_windows_prefer_sentence_ends():
    text = " ".join(["This is a sentence."] * 20)
    chunks = chunk_text(text, words, ChunkLimits(max_tokens=18, overlap_tokens=0, max_chars=10_000))
    assert all(c.endswith(".") for c in chunks)


def test_hard_max_on_a_two_million_character_line():
    line = "x" * 2_000_000  # one unbroken "token"
    chunks = chunk_text(line, words, ChunkLimits(max_tokens=256, overlap_tokens=32, max_chars=4000))
    assert all(len(c) <= 4000 for c in chunks)
    assert "".join(chunks) == line


def test_long_tokens_do_not_multiply_the_text():
    """Tokens of 1,000 characters: max_chars allows 4 per window, fewer than the 32 overlap tokens.
    Windows still advance by half a window, so each token is in at most two chunks (before the
    fix the window moved one token at a time: every token in 4 chunks)."""
    text = " ".join(f"{i:04d}" + "y" * 995 for i in range(200))
    chunks = chunk_text(text, words, ChunkLimits(max_tokens=256, overlap_tokens=32, max_chars=4000))
    assert all(len(c) <= 4000 for c in chunks)
    assert len(chunks) <= 2 * 200 // 3 + 1
    assert {w for c in chunks for w in c.split()} == set(text.split())  # nothing lost


def test_real_tokenizer_limits():
    from ragtune.embedding import TokenCounter
    from ragtune.models import resolve

    counter = TokenCounter(resolve("minilm"))
    text = ("Retrieval augmented generation grounds answers in documents. " * 200) + ("é" * 3000)
    limits = ChunkLimits(max_tokens=64, overlap_tokens=8, max_chars=1000)
    chunks = chunk_text(text, counter.spans, limits)
    assert len(chunks) > 10
    assert all(len(counter.spans(c)) <= 64 and len(c) <= 1000 for c in chunks)


def test_overlap_must_be_smaller_than_max():
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkLimits(max_tokens=10, overlap_tokens=10, max_chars=100)
