"""Question sets with gold answers, and the per-question scores of one arm's answer."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragtune.config import ConfigError, ragtune_home
from ragtune.core.metrics import (
    dedupe_keep_order, exact_match, mrr_at_k, ndcg_at_k, normalize_answer, rouge_l, sentence_bleu, token_f1,
)
from ragtune.core.modes import ADAPTER_MODES, MODES, RETRIEVAL_MODES
from ragtune.data.formats import DataError, read_rows
from ragtune.data.pipeline import TRAINING_QUESTIONS

ANSWER_METRICS = ("exact_match", "f1", "rouge_l", "bleu", "semantic")
RETRIEVAL_METRICS = ("hit_at_k", "mrr", "ndcg_at_k")


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answers: list[str]
    doc_id: str = ""  # the gold passage's document, when the set names it
    group: str = ""  # the part of the set it belongs to, when the set says (synth: seen / unseen documents)


@dataclass
class Answer:
    """One arm's answer to one question, with what it cost."""

    question_id: str
    text: str
    retrieved: list[str] = field(default_factory=list)  # document ids, best first
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # this question's share of its batch's wall time
    judged: dict[str, float] = field(default_factory=dict)  # the judge's verdicts: correct, faithful (1 or 0)


def load_questions(path: str | Path, fmt: str = "auto", sample: int | None = None, seed: int = 0) -> list[Question]:
    """The question set, or a seeded sample of it (in the file's order).

    Raises:
        DataError: unreadable file, no questions, or a question without a gold answer.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"question set {path} does not exist: set compare.questions to a SQuAD json or QA jsonl file")
    rows = read_rows(path, fmt)
    if not rows:
        raise DataError(f"question set {path} holds no questions")
    questions = [Question(r["id"], r["question"], [a for a in json.loads(r["answers"]) if a.strip()], r["doc_id"],
                          r["group"]) for r in rows]
    unanswered = [q.id for q in questions if not q.answers or not q.question.strip()]
    if unanswered:
        raise DataError(f"question set {path}: {len(unanswered)} question(s) without a question or a gold answer "
                        f"(first: id {unanswered[0]}); every question needs both to be scored")
    if sample is not None and sample < len(questions):
        keep = set(random.Random(seed).sample(range(len(questions)), sample))
        questions = [q for i, q in enumerate(questions) if i in keep]
    return questions


def adapter_for(arm: str, adapter: str | None, hybrid_adapter: str | None) -> str | None:
    """The adapter an arm answers with (None for base and rag): a directory, or a bare name — the run
    name of an adapter `ragtune train` exported to $RAGTUNE_HOME/adapters."""
    if arm not in ADAPTER_MODES:
        return None
    chosen = hybrid_adapter or adapter if arm == "hybrid" else adapter
    return adapter_path(chosen) if chosen else None


def adapter_path(ref: str) -> str:
    """``ref`` as a directory: a bare name is an adapter in $RAGTUNE_HOME/adapters."""
    return ref if "/" in ref or ref.startswith(("~", ".")) else str(ragtune_home() / "adapters" / ref)


def check_arms(arms: list[str], adapter: str | None, hybrid_adapter: str | None = None, local: bool = True) -> None:
    """Raises ConfigError, before any model loads, when an arm cannot run (``local``: the adapters
    are directories here; else names a server knows)."""
    unknown = [a for a in arms if a not in MODES]
    if unknown:
        raise ConfigError(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(MODES)}")
    needs = sorted(a for a in ADAPTER_MODES.intersection(arms) if not adapter_for(a, adapter, hybrid_adapter))
    if needs:
        raise ConfigError(f"arm(s) {', '.join(needs)} answer with an adapter: set compare.adapter to the directory "
                          "`ragtune train` wrote, or leave those arms out")
    for arm in ADAPTER_MODES.intersection(arms) if local else ():
        path = adapter_for(arm, adapter, hybrid_adapter)
        if not (Path(path) / "adapter_config.json").is_file():
            raise ConfigError(f"the {arm} arm's adapter {path} holds no adapter (adapter_config.json is missing)")


def training_overlap(adapter: str | None, questions: list[Question]) -> dict[str, Any] | None:
    """Evaluation questions the adapter saw in training or validation (SQuAD-normalised question text,
    matched against the training_questions.txt that `ragtune train` copies from `ragtune prepare`)."""
    if not adapter:
        return None
    path = Path(adapter) / TRAINING_QUESTIONS
    if not path.is_file():
        return {"checked": False, "reason": f"{path} does not exist (not a directory written by `ragtune train`, "
                                            "or trained before ragtune recorded its questions)"}
    seen = set(path.read_text(encoding="utf-8").splitlines())
    overlap = [q.id for q in questions if normalize_answer(q.question) in seen]
    return {"checked": True, "overlap": len(overlap), "question_ids": overlap}


def semantic_similarity(encoder, questions: list[Question], answers: list[Answer]) -> list[float]:
    """Semantic answer similarity (0-1) per question: the cosine between the embeddings of the
    answer and of its closest gold answer, by ``encoder`` (the collection's: a correct answer
    phrased as a sentence scores near the gold, where token overlap marks it nearly wrong); a
    negative cosine counts as 0, an empty answer scores 0."""
    import numpy as np

    golds = encoder.encode([g for q in questions for g in q.answers])
    replies = encoder.encode([a.text for a in answers])
    ends = np.cumsum([len(q.answers) for q in questions])
    return [0.0 if not a.text.strip() else float(max(0.0, (golds[end - len(q.answers):end] @ reply).max()))
            for q, a, reply, end in zip(questions, answers, replies, ends)]


def score(question: Question, answer: Answer, arm: str, k: int, semantic: float) -> dict[str, float]:
    """Answer metrics (0-1; ``semantic`` from ``semantic_similarity``), and for a retrieving arm
    with a gold document the retrieval metrics."""
    scores = {"exact_match": exact_match(answer.text, question.answers), "f1": token_f1(answer.text, question.answers),
              "rouge_l": rouge_l(answer.text, question.answers), "bleu": sentence_bleu(answer.text, question.answers),
              "semantic": semantic}
    if arm in RETRIEVAL_MODES and question.doc_id:
        ranked, gold = dedupe_keep_order(answer.retrieved), {question.doc_id: 1}
        scores.update(hit_at_k=float(question.doc_id in ranked[:k]), mrr=mrr_at_k(ranked, gold, k),
                      ndcg_at_k=ndcg_at_k(ranked, gold, k))
    return scores


@dataclass(frozen=True)
class FactUpdate:
    """A fact that a revised document changes, and the question that asks for it. ``before`` and
    ``after`` are the phrasings that state the old and the new fact (the first one canonical)."""

    id: str
    question: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    doc_id: str = ""


def _phrasings(value: object) -> tuple[str, ...]:
    phrasings = (value,) if isinstance(value, str) else tuple(value) if isinstance(value, list) else ()
    if not phrasings or not all(isinstance(p, str) and p.strip() for p in phrasings):
        raise TypeError(f"{value!r} is neither a non-empty string nor a list of them")
    return phrasings


def load_fact_updates(path: str | Path) -> list[FactUpdate]:
    """Rows of question, answer_before and answer_after (each a string, or a list of phrasings
    that state the same fact), optional id and doc_id.

    Raises:
        DataError: naming the line, when a row lacks one of them or is not JSON.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"freshness questions {path} do not exist")
    updates = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            updates.append(FactUpdate(str(row.get("id") or n), row["question"], _phrasings(row["answer_before"]),
                                      _phrasings(row["answer_after"]), str(row.get("doc_id") or "")))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}, line {n}: expected JSON with question, answer_before, answer_after "
                            f"(each a string or a list of strings) ({exc})") from None
    if not updates:
        raise DataError(f"freshness questions {path} hold no rows")
    return updates


def which_fact(answer: str, update: FactUpdate) -> str:
    """"new" when the answer states the revised fact (any of its phrasings), "old" the replaced one,
    else "neither" (SQuAD-normalised whole-token containment; an answer stating both counts as neither)."""
    text = f" {normalize_answer(answer)} "

    def states(phrasings: tuple[str, ...]) -> bool:
        return any(f" {normalize_answer(p)} " in text for p in phrasings)

    new, old = states(update.after), states(update.before)
    return "new" if new and not old else "old" if old and not new else "neither"
