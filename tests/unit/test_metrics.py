import math

import pytest

from ragtune.core.metrics import dedupe_keep_order, mrr_at_k, ndcg_at_k, recall_at_k


def test_ndcg_hand_computed():
    # relevant at ranks 2 and 4 of 2 relevant documents
    got = ndcg_at_k(["x", "a", "y", "b"], {"a": 1, "b": 1}, 10)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert got == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], {"a": 1, "b": 1}, 10) == pytest.approx(1.0)
    assert ndcg_at_k(["x"], {"a": 1}, 10) == 0.0


def test_ndcg_graded_and_cut():
    assert ndcg_at_k(["b", "a"], {"a": 2, "b": 1}, 1) == pytest.approx(0.5)
    assert ndcg_at_k(["x", "a"], {"a": 1}, 1) == 0.0


def test_recall_and_mrr():
    assert recall_at_k(["a", "x", "b"], {"a": 1, "b": 1, "c": 1}, 2) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 10) == pytest.approx(1 / 3)
    assert mrr_at_k(["x", "y", "a"], {"a": 1}, 2) == 0.0


def test_dedupe_keeps_best_rank():
    assert dedupe_keep_order(["d1", "d2", "d1", "d3", "d2"]) == ["d1", "d2", "d3"]


def test_rouge_l_hand_computed():
    from ragtune.core.metrics import rouge_l

    # LCS of "the cat sat on the mat" and "the cat on the mat" is 5 tokens: P 5/6, R 5/5.
    assert rouge_l("The cat sat on the mat.", ["the cat on the mat"]) == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("a b c", ["x y", "c b a"]) == pytest.approx(1 / 3)  # the best gold: LCS 1 of 3 and 3
    assert rouge_l("", ["anything"]) == 0.0


def test_bootstrap_interval_matches_the_normal_theory_width():
    import numpy as np

    from ragtune.core.metrics import bootstrap_mean

    values = np.random.default_rng(1).normal(0.5, 1.0, 400)
    est = bootstrap_mean(values, samples=4000)
    assert est.mean == pytest.approx(values.mean())
    # 95% interval of a mean of 400 draws with sd 1: ± 1.96 / 20 = ± 0.098
    assert est.high - est.low == pytest.approx(2 * 1.96 * values.std() / 20, rel=0.1)
    assert est.low < est.mean < est.high


def test_paired_bootstrap_difference_and_p_value():
    import numpy as np

    from ragtune.core.metrics import paired_bootstrap

    rng = np.random.default_rng(2)
    base = rng.uniform(0, 1, 300)
    same = paired_bootstrap(base, base)
    assert same.mean == 0 and same.p_value == 1.0
    better = paired_bootstrap(base + 0.2 + rng.normal(0, 0.05, 300), base)
    assert better.mean == pytest.approx(0.2, abs=0.02) and better.low > 0 and better.p_value < 0.001
    noise = paired_bootstrap(base + rng.normal(0, 0.3, 300), base)
    assert noise.low < 0 < noise.high and noise.p_value > 0.05
    with pytest.raises(ValueError, match="got 2 and 3"):
        paired_bootstrap([1, 2], [1, 2, 3])


def test_sentence_bleu_hand_computed():
    from ragtune.core.metrics import sentence_bleu

    assert sentence_bleu("the cat sat on the mat", ["a dog", "the cat sat on the mat"]) == pytest.approx(1.0)
    # "the cat" against 6 reference tokens: 1-gram and 2-gram precision 1 (effective order 2),
    # brevity penalty exp(1 - 6/2).
    assert sentence_bleu("the cat", ["the cat sat on the mat"]) == pytest.approx(math.exp(-2))
    assert sentence_bleu("", ["anything"]) == 0.0
