"""Question synthesis, the pure parts: the answers picked from a chunk, the question cleaned out of
a generator's reply, the checks each pair must pass, near-duplicate questions, and the split of
documents and questions into training and evaluation sets.

The answer comes first: a name, number or date of the chunk is picked, and the generator writes the
question it answers. Every answer is then a span of its chunk, as in SQuAD, and the checks are about
the question: is it one, does it stand alone, does it give its answer away, and does the generator,
asked it with the chunk, answer it with the picked span (the round trip).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

from ragtune.core.documents import sha256_hex
from ragtune.core.metrics import normalize_answer

# the reasons a generated pair is dropped, in the order they are checked
DROP_REASONS = ("no_question", "malformed", "answer_in_question", "not_in_chunk", "roundtrip", "duplicate")
SPLITS = ("train", "eval_seen", "eval_unseen")

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_NUMBER = re.compile(r"\b\d[\d,.:/-]*\d\b(?:\s(?:percent|million|billion|thousand|years?|km|miles|kg|ha|"
                     r"BC|AD|BCE|CE)\b)?|\b\d\b")
# a run of capitalised words, allowing a lowercase link (of, the, de, ...) between two of them
_NAME = re.compile(r"\b[A-Z][\w'’.-]*[\w](?:\s(?:(?:of|the|de|von|van|and|for|upon)\s)?[A-Z][\w'’.-]*[\w])*")
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE = re.compile(rf"\b(?:\d{{1,2}}\s{_MONTH}\s\d{{3,4}}|{_MONTH}\s\d{{1,2}},?\s\d{{3,4}}|{_MONTH}\s\d{{3,4}})\b")
_FUNCTION_WORDS = frozenset("""a an the this that these those it its he she they his her their we our you your i
in on at by for with from to of as and or but if when while after before during since until however although
though also there here then thus many most some several other such one two three all each every both either no
not""".split())
_PREFIX = re.compile(r"^\s*(?:question|q)\s*\d*\s*[:.)-]\s*|^\s*\d+\s*[.)]\s*", re.IGNORECASE)
# questions about the prompt rather than the world: no reader of the collection could ask them
_ABOUT_THE_PROMPT = re.compile(r"\b(?:the|this|that) (?:passage|text|sentence|paragraph|document|article|excerpt)\b"
                               r"|\banswer to (?:the|this) question\b|\bthe answer\b|\bquiz\b", re.IGNORECASE)
MIN_QUESTION_WORDS, MAX_QUESTION_WORDS = 4, 30


def answer_candidates(text: str, n: int) -> list[str]:
    """Up to ``n`` answers picked from ``text``: dates, numbers and names (not a sentence's first word
    alone, not a function word); the first span of sentences spread over the chunk, and a sentence's
    second span only when fewer sentences than ``n`` have one."""
    per_sentence: list[list[str]] = []
    prose = [line for line in text.splitlines() if not line.lstrip().startswith("#")]  # headings name, not state
    for sentence in (s for line in prose for s in _SENTENCE_END.split(line)):
        found: list[tuple[int, str]] = []
        for pattern in (_DATE, _NUMBER, _NAME):
            for m in pattern.finditer(sentence):
                if any(start <= m.start() < start + len(s) for start, s in found):
                    continue  # inside a span already taken (the year of a date, a name's part)
                span = re.sub(r"['’]s$", "", m.group(0).strip(" ,.-"))
                words = span.split()
                if pattern is _NAME and (words[0].lower() in _FUNCTION_WORDS
                                         or (m.start() == 0 and len(words) == 1)):
                    continue
                if len(span) >= 2:
                    found.append((m.start(), span))
        per_sentence.append([span for _, span in sorted(found)])
    seen: set[str] = set()
    firsts: list[str] = []  # one span of each sentence that has one, in order
    rest: list[str] = []  # the sentences' other spans, round robin
    for depth in range(max((len(s) for s in per_sentence), default=0)):
        for spans in per_sentence:
            if depth < len(spans) and (key := normalize_answer(spans[depth])) and key not in seen:
                seen.add(key)
                (firsts if depth == 0 else rest).append(spans[depth])
    if len(firsts) <= n:
        return (firsts + rest)[:n]
    return [firsts[round(i * (len(firsts) - 1) / (n - 1))] for i in range(n)] if n > 1 else firsts[:1]


def clean_question(reply: str) -> str | None:
    """The question in a generator's reply: the last line that ends with a question mark, without
    a "Question:" or numbering prefix and surrounding quotes (None: the reply asks nothing)."""
    lines = [_PREFIX.sub("", line).strip().strip("\"'“”*").strip() for line in reply.splitlines()]
    asked = [line for line in lines if line.endswith("?")]
    return asked[-1] if asked else None


def question_problem(question: str, answer: str) -> str | None:
    """Why a cleaned question is unusable for ``answer`` ("malformed", "answer_in_question"), or None."""
    words = question.split()
    if not MIN_QUESTION_WORDS <= len(words) <= MAX_QUESTION_WORDS or _ABOUT_THE_PROMPT.search(question) \
            or question.count("?") > 1:
        return "malformed"
    asked = {_singular(w) for w in normalize_answer(question).split()}
    if all(_singular(w) in asked for w in normalize_answer(answer).split()):
        return "answer_in_question"
    return None


def _singular(word: str) -> str:
    """``word`` without a plural's or a possessive's final s (Tesla's, teslas → tesla; EU's → eu)."""
    return word[:-1] if len(word) >= 3 and word.endswith("s") else word


def in_chunk(answer: str, chunk: str) -> bool:
    """``answer`` appears in ``chunk`` on word boundaries, in lower case, punctuation read as spaces
    ("10" is in "the 10-county region", where SQuAD's normalisation would make "10county")."""
    return f" {_words(answer)} " in f" {_words(chunk)} "


def _words(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]|_", " ", text.lower()).split())


def token_recall(answer: str, reply: str) -> float:
    """The share of ``answer``'s words (SQuAD-normalised, with repeats) that ``reply`` holds."""
    wanted = Counter(normalize_answer(answer).split())
    if not wanted:
        return 0.0
    return sum((wanted & Counter(normalize_answer(reply).split())).values()) / sum(wanted.values())


def near_duplicates(questions: Sequence[str], threshold: float) -> set[int]:
    """The questions whose word sets overlap an earlier kept one's by Jaccard >= ``threshold``.

    Prefix filtering keeps this near linear: two sets that similar share one of the rarest
    ``|A| - ceil(threshold * |A|) + 1`` words of either, so only questions sharing one are compared.
    """
    sets = [frozenset(normalize_answer(q).split()) for q in questions]
    frequency = Counter(word for s in sets for word in s)
    index: dict[str, list[int]] = {}
    dropped: set[int] = set()
    for i, words in enumerate(sets):
        ordered = sorted(words, key=lambda w: (frequency[w], w))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        candidates = {j for word in prefix for j in index.get(word, ())}
        if any(len(words & sets[j]) / len(words | sets[j]) >= threshold for j in candidates if sets[j] or words):
            dropped.add(i)
            continue
        for word in prefix:
            index.setdefault(word, []).append(i)
    return dropped


def split_of(doc_id: str, question_id: str, unseen_document_fraction: float, heldout_question_fraction: float,
             seed: int) -> str:
    """The set a pair goes to (one of ``SPLITS``), by hash: a document is unseen (none of its
    questions trains) or seen, and a seen document's question trains or is held out."""
    if _fraction(f"{seed}:document:{doc_id}") < unseen_document_fraction:
        return "eval_unseen"
    return "eval_seen" if _fraction(f"{seed}:question:{question_id}") < heldout_question_fraction else "train"


def _fraction(key: str) -> float:
    return int(sha256_hex(key)[:15], 16) / 16 ** 15
