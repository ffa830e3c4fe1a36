"""The chat prompts shared by fine-tuning data, serving and evaluation.

Training rows and inference requests are built by the same functions, so an adapter trained
with context passages sees exactly the prompt layout it will be served with.
"""

from __future__ import annotations

from collections.abc import Sequence

CLOSED_BOOK_SYSTEM = "You are a helpful assistant. Answer the question with a short, exact answer."
WITH_CONTEXT_SYSTEM = (
    "You are a helpful assistant. Answer the question with a short, exact answer, using the "
    "context passages when they contain it."
)


def format_passages(passages: Sequence[str]) -> str:
    """Number the passages as ``[1] ...`` blocks (the numbers are what citations refer to)."""
    return "\n\n".join(f"[{i}] {text.strip()}" for i, text in enumerate(passages, 1))


def qa_messages(question: str, passages: Sequence[str] | None = None, system: str | None = None,
                answer: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking ``question``, optionally over context ``passages``.

    Args:
        question: the user's question.
        passages: retrieved context; ``None`` asks closed-book.
        system: the system message; ``None`` picks the default for the mode.
        answer: when given (training), appended as the assistant turn.
    """
    if passages is None:
        messages = [{"role": "system", "content": system or CLOSED_BOOK_SYSTEM},
                    {"role": "user", "content": question.strip()}]
    else:
        messages = [{"role": "system", "content": system or WITH_CONTEXT_SYSTEM},
                    {"role": "user", "content": f"Context:\n{format_passages(passages)}\n\nQuestion: {question.strip()}"}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer.strip()})
    return messages
