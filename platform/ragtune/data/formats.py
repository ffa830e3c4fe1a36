"""Fine-tuning input formats, normalised to one row shape.

Every input row becomes ``{id, question, answer, answers, context, doc_id, chat}``: ``answers``
is a JSON list of acceptable answers (SQuAD has several), ``chat`` the JSON ``messages`` of a
chat row (empty for the question/answer formats), missing optional fields are empty strings.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.core.documents import sha256_hex

FORMATS = ("squad", "qa", "alpaca", "chat")
REQUIRED = {
    "qa": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
}


class DataError(ValueError):
    """Fine-tuning input is unusable; the message names the file and what to change."""


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files named directly or by glob, sorted; an input that matches nothing is an error."""
    if not inputs:
        raise DataError("no inputs: set prepare.inputs (SQuAD json, or QA / Alpaca / chat jsonl files)")
    files: list[Path] = []
    for item in inputs:
        matches = sorted(glob.glob(str(Path(item).expanduser()))) if any(c in item for c in "*?[") else [item]
        found = [Path(m) for m in matches if Path(m).is_file()]
        if not found:
            raise DataError(f"input {item!r} matches no file")
        files.extend(found)
    return files


def _first_record(path: Path) -> Any:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    return _loads(line, path)
        raise DataError(f"{path} is empty: it has no JSON lines")
    return _loads(path.read_text(encoding="utf-8"), path)


def _loads(text: str, path: Path) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); expected {'one object per line' if path.suffix == '.jsonl' else 'a SQuAD file'}") from None


def detect_format(path: Path, declared: str) -> str:
    """The file's format, checked against its first record (``declared`` may be ``auto``).

    Raises:
        DataError: the file is not JSON, or lacks the columns its format needs.
    """
    first = _first_record(path)
    if isinstance(first, dict) and "data" in first and path.suffix == ".json":
        fmt = "squad"
    elif path.suffix != ".jsonl":
        raise DataError(f"{path}: a .json input must be a SQuAD file with a top-level 'data' list; "
                        "QA, Alpaca and chat data go in .jsonl files, one object per line")
    elif declared != "auto":
        fmt = declared
    elif isinstance(first, dict) and "messages" in first:
        fmt = "chat"
    elif isinstance(first, dict) and "instruction" in first:
        fmt = "alpaca"
    else:
        fmt = "qa"
    if fmt != "squad":
        _check_columns(first, fmt, f"{path}, first line")
    return fmt


def _check_columns(record: Any, fmt: str, where: str) -> None:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [c for c in REQUIRED[fmt] if c not in record]
    if missing:
        found = ", ".join(sorted(record)) or "none"
        raise DataError(f"{where}: the {fmt} format needs column(s) {', '.join(missing)} (found: {found}); "
                        f"rename the columns or set prepare.format to the file's format ({', '.join(FORMATS)})")


def _row(question: str, answer: str, *, answers: list[str] | None = None, context: str = "", doc_id: str = "",
         chat: str = "", row_id: str = "", group: str = "") -> dict[str, str]:
    return {
        "id": row_id or sha256_hex(f"{question}\x00{answer}\x00{context}")[:16],
        "question": question, "answer": answer, "answers": json.dumps(answers or [answer], ensure_ascii=False),
        "context": context, "doc_id": doc_id, "chat": chat, "group": group,
    }


def normalize(record: Any, fmt: str, where: str) -> dict[str, str]:
    """One JSON line of a qa / alpaca / chat file as a normalised row."""
    _check_columns(record, fmt, where)
    if fmt == "qa":
        golds = record.get("answers") if isinstance(record.get("answers"), list) else None  # e.g. prepare's eval.jsonl
        return _row(str(record["question"]), str(record["answer"]), context=str(record.get("context") or ""),
                    answers=[str(a) for a in golds] if golds else None, doc_id=str(record.get("doc_id") or ""),
                    row_id=str(record.get("id") or ""), group=str(record.get("group") or ""))
    if fmt == "alpaca":
        prompt = str(record["instruction"]).strip()
        if record.get("input"):
            prompt += "\n\n" + str(record["input"]).strip()
        return _row(prompt, str(record["output"]), row_id=str(record.get("id") or ""))
    messages = record["messages"]
    if (not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages)
            or messages[-1]["role"] != "assistant"):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} ending with an assistant turn")
    question = next((str(m["content"]) for m in messages if m["role"] == "user"), "")
    chat = json.dumps(messages, ensure_ascii=False)
    return _row(question, str(messages[-1]["content"]), chat=chat, row_id=str(record.get("id") or sha256_hex(chat)[:16]))


def squad_rows(data: dict, where: str) -> Iterator[dict[str, str]]:
    """Rows of a SQuAD v1.1 file: one per question, the paragraph as context, ``<title>#<i>`` as doc id."""
    try:
        for article in data["data"]:
            for i, para in enumerate(article["paragraphs"]):
                for qa in para["qas"]:
                    answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                    if answers:  # SQuAD 2.0 unanswerable questions have none
                        yield _row(qa["question"], answers[0], answers=answers, context=para["context"],
                                   doc_id=f"{article['title']}#{i}", row_id=str(qa["id"]))
    except (KeyError, TypeError) as exc:
        raise DataError(f"{where}: not a SQuAD v1.1 file (missing {exc}); expected data[].paragraphs[].qas[]") from None


def read_rows(path: Path, declared: str = "auto") -> list[dict[str, str]]:
    """All rows of one file, on the driver (for evaluation sets and small inputs)."""
    fmt = detect_format(path, declared)
    if fmt == "squad":
        return list(squad_rows(_loads(path.read_text(encoding="utf-8"), path), str(path)))
    with open(path, encoding="utf-8") as fh:
        return [normalize(_loads(line, path), fmt, f"{path}, line {n}") for n, line in enumerate(fh, 1) if line.strip()]
