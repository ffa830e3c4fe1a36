"""Ranking metrics with the trec_eval / BEIR conventions (linear gains, cut at k) and the SQuAD
answer metrics (exact match, token F1)."""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Mapping, Sequence

_PUNCTUATION = frozenset(string.punctuation)


def ndcg_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """nDCG@k with graded relevance as linear gain, as pytrec_eval's ``ndcg_cut`` computes it."""
    dcg = sum(relevant.get(doc, 0) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((g for g in relevant.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(rank + 2) for rank, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Share of the relevant documents found in the first k."""
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    return len(wanted.intersection(ranked[:k])) / len(wanted) if wanted else 0.0


def mrr_at_k(ranked: Sequence[str], relevant: Mapping[str, int], k: int) -> float:
    """Reciprocal rank of the first relevant document within the first k (0 if none)."""
    for rank, doc in enumerate(ranked[:k]):
        if relevant.get(doc, 0) > 0:
            return 1.0 / (rank + 1)
    return 0.0


def dedupe_keep_order(items: Sequence[str]) -> list[str]:
    """Collapse repeated ids (several chunks of one document) to the first, best-ranked one."""
    seen: set[str] = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lowercase, drop punctuation and a/an/the, collapse spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD token F1 of ``prediction``, the maximum over the gold answers."""
    pred = normalize_answer(prediction).split()
    best = 0.0
    for gold in golds:
        ref = normalize_answer(gold).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if common:
            precision, recall = common / len(pred), common / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
        elif not pred and not ref:
            best = 1.0
    return best


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD exact match after normalisation, the maximum over the gold answers."""
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))
