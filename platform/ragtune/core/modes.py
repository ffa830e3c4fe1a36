"""The four ways to answer a question — serving's `ragtune.mode` and evaluation's arms — and the
search modes of retrieval."""

from __future__ import annotations

from typing import Literal, get_args

Mode = Literal["base", "rag", "ft", "hybrid"]
MODES: tuple[str, ...] = get_args(Mode)
RETRIEVAL_MODES = frozenset({"rag", "hybrid"})  # answer over retrieved passages
ADAPTER_MODES = frozenset({"ft", "hybrid"})  # answer with a fine-tuned adapter

SearchMode = Literal["dense", "bm25", "hybrid"]
