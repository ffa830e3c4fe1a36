"""Ranking metrics with the trec_eval / BEIR conventions (linear gains, cut at k) and the SQuAD
answer metrics (exact match, token F1), ROUGE-L, and bootstrap intervals for comparing arms."""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


def rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens), the maximum over the gold answers.
    Tokens as the ``rouge-score`` package makes them without stemming: lowercase alphanumeric runs."""
    pred = _rouge_tokens(prediction)
    best = 0.0
    for gold in golds:
        ref = _rouge_tokens(gold)
        lcs = _lcs_length(pred, ref)
        if lcs:
            precision, recall = lcs / len(pred), lcs / len(ref)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _rouge_tokens(text: str) -> list[str]:
    return "".join(ch if ch.isascii() and ch.isalnum() else " " for ch in text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, 1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


_BLEU = None


def sentence_bleu(prediction: str, golds: Sequence[str]) -> float:
    """sacrebleu's sentence BLEU (13a tokenizer, exponential smoothing, effective order) against all
    gold answers as references, on a 0-1 scale like the other answer metrics."""
    global _BLEU
    if _BLEU is None:
        from sacrebleu.metrics import BLEU

        _BLEU = BLEU(effective_order=True)
    return _BLEU.sentence_score(prediction, list(golds)).score / 100


@dataclass(frozen=True)
class Estimate:
    """A mean with its percentile-bootstrap 95% interval; for a paired difference also the
    two-sided p-value of "no difference"."""

    mean: float
    low: float
    high: float
    p_value: float | None = None


def bootstrap_mean(values: Sequence[float], samples: int = 2000, seed: int = 0) -> Estimate:
    """The mean of ``values`` with a 95% percentile-bootstrap interval (questions resampled)."""
    import numpy as np

    data = np.asarray(values, dtype=float)
    if data.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    means = data[np.random.default_rng(seed).integers(0, data.size, (samples, data.size))].mean(axis=1)
    return Estimate(float(data.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)))


def paired_bootstrap(a: Sequence[float], b: Sequence[float], samples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of ``a - b`` over the same questions, its 95% interval, and the two-sided p-value:
    twice the share of resampled mean differences on the far side of zero (capped at 1)."""
    import numpy as np

    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired_bootstrap needs two non-empty scores per question (got {len(a)} and {len(b)})")
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    means = diff[np.random.default_rng(seed).integers(0, diff.size, (samples, diff.size))].mean(axis=1)
    far_side = min((means <= 0).mean(), (means >= 0).mean())
    return Estimate(float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5)),
                    float(min(1.0, 2 * far_side)))
